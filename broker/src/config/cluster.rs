//! The `[cluster]` settings (`--node-id`, `--cluster-listen`, `--peer`, ...) and their
//! validation into a [`ClusterConfig`].
//!
//! Without a `[cluster]` section (and none of its flags or variables) ternd runs alone,
//! exactly as before. With one, it is node `node_id` of the cluster `peers` lists; every
//! node is given the same list, its own entry included, and that list is the cluster's
//! first membership. Peer links must authenticate: with a shared secret (at least 16
//! bytes, read from `secret_file`) and/or mutual TLS (`tls = true` with the `[tls]`
//! certificate and key, and `tls.client_ca` as the CA every node's certificate must
//! chain to, checked both ways), so that nobody joins uninvited.
//!
//! A node added to a running cluster later starts with `join = true` (`--cluster-join`):
//! it forms nothing and waits, empty, until a member adds it (`tern cluster add-node`);
//! its `peers` may then be left out.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::ConfigError;
use crate::tls::TlsFiles;

/// Shortest cluster secret: 128 bits, enough that guessing is hopeless.
pub const MIN_SECRET_BYTES: usize = 16;

/// A cluster node's identifier: unique in its cluster, never reused for another machine.
pub type NodeId = u64;

/// The `[cluster]` table.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id in the cluster (a number ≥ 1, listed in the peers)
    #[arg(long = "node-id", env = "TERN_NODE_ID", value_name = "ID")]
    pub node_id: Option<NodeId>,

    /// Address of the listener for the other nodes of the cluster
    #[arg(
        id = "cluster_listen",
        long = "cluster-listen",
        env = "TERN_CLUSTER_LISTEN",
        value_name = "ADDR"
    )]
    pub listen: Option<SocketAddr>,

    /// A member of the cluster, this node included: ID@HOST:PORT (repeat for each)
    #[arg(
        long = "peer",
        env = "TERN_PEERS",
        value_name = "ID@HOST:PORT",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub peers: Vec<Peer>,

    /// File holding the secret every node of the cluster shares (≥ 16 bytes)
    #[arg(
        long = "cluster-secret-file",
        env = "TERN_CLUSTER_SECRET_FILE",
        value_name = "FILE"
    )]
    pub secret_file: Option<PathBuf>,

    /// Peer links use TLS with the [tls] certificate and key, and present them to each other
    #[arg(
        id = "cluster_tls",
        long = "cluster-tls",
        env = "TERN_CLUSTER_TLS",
        value_name = "BOOL"
    )]
    pub tls: Option<bool>,

    /// Join a running cluster: wait to be added (tern cluster add-node) instead of forming one
    #[arg(
        id = "cluster_join",
        long = "cluster-join",
        env = "TERN_CLUSTER_JOIN",
        value_name = "BOOL"
    )]
    pub join: Option<bool>,
}

impl ClusterSettings {
    /// Whether any cluster setting was given.
    pub fn is_set(&self) -> bool {
        let ClusterSettings {
            node_id,
            listen,
            peers,
            secret_file,
            tls,
            join,
        } = self;
        node_id.is_some()
            || listen.is_some()
            || !peers.is_empty()
            || secret_file.is_some()
            || tls.is_some()
            || join.is_some()
    }

    /// `self` where set, `lower` elsewhere.
    pub fn over(mut self, lower: ClusterSettings) -> ClusterSettings {
        let ClusterSettings {
            node_id,
            listen,
            peers,
            secret_file,
            tls,
            join,
        } = lower;
        self.node_id = self.node_id.or(node_id);
        self.listen = self.listen.or(listen);
        if self.peers.is_empty() {
            self.peers = peers;
        }
        self.secret_file = self.secret_file.or(secret_file);
        self.tls = self.tls.or(tls);
        self.join = self.join.or(join);
        self
    }
}

/// One `ID@HOST:PORT` of `peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    /// As written: a host name is resolved when the link is made, not at start.
    pub addr: String,
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (id, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("'{s}' is not ID@HOST:PORT"))?;
        let id: NodeId = id
            .parse()
            .map_err(|_| format!("'{id}' in '{s}' is not a node id (a number ≥ 1)"))?;
        if id == 0 {
            return Err(format!("node id 0 in '{s}': ids start at 1"));
        }
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("'{addr}' in '{s}' has no :PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("'{addr}' in '{s}' is not HOST:PORT"));
        }
        Ok(Peer {
            id,
            addr: addr.to_owned(),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// This node's place in a cluster, validated.
#[derive(Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// Every member, this node included, by id: the first membership.
    pub peers: BTreeMap<NodeId, String>,
    /// The shared secret peer links prove they know, if set.
    pub secret: Option<Vec<u8>>,
    /// TLS on peer links (both ways, each node presenting its certificate), if set.
    pub tls: Option<TlsFiles>,
    /// Wait to be added to a running cluster instead of forming one with `peers`.
    pub join: bool,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .field("join", &self.join)
            .finish()
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Checks the `[cluster]` settings: `None` when none was given (a single node).
/// `tls` is the `[tls]` section's certificate, key and client CA, which `cluster.tls`
/// uses for peer links.
///
/// # Errors
///
/// A missing or inconsistent key, named; an unreadable or short secret file.
pub fn validate(
    s: ClusterSettings,
    tls: Option<&TlsFiles>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    if !s.is_set() {
        return Ok(None);
    }
    let node_id = s
        .node_id
        .ok_or_else(|| invalid("cluster.node_id", "is required in a cluster"))?;
    if node_id == 0 {
        return Err(invalid("cluster.node_id", "ids start at 1"));
    }
    let listen = s.listen.ok_or_else(|| {
        invalid(
            "cluster.listen",
            "is required in a cluster (the address the other nodes connect to)",
        )
    })?;
    let mut peers = BTreeMap::new();
    for p in s.peers {
        if let Some(addr) = peers.insert(p.id, p.addr.clone()) {
            return Err(invalid(
                "cluster.peers",
                format!("node {} is listed twice ({addr} and {})", p.id, p.addr),
            ));
        }
    }
    let join = s.join.unwrap_or(false);
    if !join && !peers.contains_key(&node_id) {
        return Err(invalid(
            "cluster.peers",
            format!("does not list this node ({node_id}); every node gets the same full list"),
        ));
    }
    let secret = s.secret_file.map(|path| read_secret(&path)).transpose()?;
    let tls = match s.tls {
        Some(true) => {
            let files = tls.ok_or_else(|| {
                invalid(
                    "cluster.tls",
                    "needs tls.cert and tls.key (the certificate each node presents)",
                )
            })?;
            if files.client_ca.is_none() {
                return Err(invalid(
                    "cluster.tls",
                    "needs tls.client_ca: the CA that signs every node's certificate, \
                     which nodes check each other against both ways",
                ));
            }
            files
                .load()
                .map_err(|e| invalid("cluster.tls", e.to_string()))?;
            Some(files.clone())
        }
        _ => None,
    };
    if secret.is_none() && tls.is_none() {
        return Err(invalid(
            "cluster.secret_file",
            "is required (or cluster.tls with tls.client_ca): peer links must authenticate",
        ));
    }
    Ok(Some(ClusterConfig {
        node_id,
        listen,
        peers,
        secret,
        tls,
        join,
    }))
}

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        invalid(
            "cluster.secret_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    // An editor's final newline is not part of the secret.
    let secret = bytes.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(
            "cluster.secret_file",
            format!(
                "{} holds {} bytes; a cluster secret has at least {MIN_SECRET_BYTES}",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> ClusterSettings {
        #[derive(Deserialize)]
        struct File {
            cluster: ClusterSettings,
        }
        toml::from_str::<File>(toml).unwrap().cluster
    }

    fn secret_file() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "0123456789abcdef0123\n").unwrap();
        f
    }

    #[test]
    fn no_cluster_settings_means_a_single_node() {
        assert!(validate(ClusterSettings::default(), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_full_section_validates() {
        let secret = secret_file();
        let s = settings(&format!(
            r#"[cluster]
            node_id = 2
            listen = "127.0.0.1:7502"
            peers = ["1@127.0.0.1:7501", "2@127.0.0.1:7502", "3@localhost:7503"]
            secret_file = "{}""#,
            secret.path().display()
        ));
        let c = validate(s, None).unwrap().unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers[&3], "localhost:7503");
        assert_eq!(c.secret.as_deref(), Some(&b"0123456789abcdef0123"[..]));
        assert!(!format!("{c:?}").contains("0123456789"));
    }

    #[test]
    fn a_joining_node_needs_no_peers() {
        let secret = secret_file();
        let s = settings(&format!(
            r#"[cluster]
            node_id = 4
            listen = "127.0.0.1:7504"
            join = true
            secret_file = "{}""#,
            secret.path().display()
        ));
        let c = validate(s, None).unwrap().unwrap();
        assert!(c.join && c.peers.is_empty());
    }

    #[test]
    fn each_mistake_names_its_key() {
        let secret = secret_file();
        let path = secret.path().display();
        let cases = [
            (
                r#"listen = "127.0.0.1:1"
                peers = ["1@a:1"]"#
                    .to_owned(),
                "cluster.node_id",
            ),
            (r#"node_id = 1"#.to_owned(), "cluster.listen"),
            (
                r#"node_id = 1
                listen = "127.0.0.1:1"
                peers = ["2@a:1"]"#
                    .to_owned(),
                "cluster.peers",
            ),
            (
                r#"node_id = 1
                listen = "127.0.0.1:1"
                peers = ["1@a:1", "1@b:1"]"#
                    .to_owned(),
                "cluster.peers",
            ),
            (
                r#"node_id = 1
                listen = "127.0.0.1:1"
                peers = ["1@a:1"]"#
                    .to_owned(),
                "cluster.secret_file",
            ),
            (
                format!(
                    r#"node_id = 1
                    listen = "127.0.0.1:1"
                    peers = ["1@a:1"]
                    secret_file = "{path}"
                    tls = true"#
                ),
                "cluster.tls",
            ),
        ];
        for (body, key) in cases {
            let err = validate(settings(&format!("[cluster]\n{body}")), None).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn a_short_secret_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "short\n").unwrap();
        let s = ClusterSettings {
            node_id: Some(1),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            peers: vec!["1@a:1".parse().unwrap()],
            secret_file: Some(f.path().to_owned()),
            tls: None,
            join: None,
        };
        let err = validate(s, None).unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
    }

    #[test]
    fn peers_parse_strictly() {
        for bad in ["1", "x@a:1", "0@a:1", "1@a", "1@:1", "1@a:port"] {
            assert!(bad.parse::<Peer>().is_err(), "{bad}");
        }
        let p: Peer = "7@[::1]:7501".parse().unwrap();
        assert_eq!(p.to_string(), "7@[::1]:7501");
    }
}
