//! Queue administration from the client.

use std::time::Duration;

use tern_codec::names::validate_name;
use tern_codec::{
    Binding, ClusterChange, ClusterInfo, ClusterOp, ClusterQuery, ErrorCode, Frame, GroupInfo,
    GroupsQuery, Overflow, QueueCreate, QueueDeclare, QueueDelete, QueueInfo, QueueMove,
    QueueOptions, QueuePurge, QueueQuery, ServerInfo, ServerQuery,
};
use tokio::sync::oneshot;

use crate::client::Inner;
use crate::state::{AdminKind, AdminReply, Request};
use crate::{Client, Error};

/// A queue to declare: its name, bindings and options. Unset options take the
/// server's defaults (`max_deliver` 5, `ack_timeout` 30 s unless configured otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    pub bindings: Vec<Binding>,
    pub max_deliver: Option<u32>,
    pub ack_timeout: Option<Duration>,
    pub dead_letter: Option<String>,
    pub ttl: Option<Duration>,
    pub max_length: Option<u64>,
    pub overflow: Overflow,
    /// In a cluster: the nodes that hold a replica (`None`: the cluster's default, 3).
    pub replicas: Option<u8>,
}

impl QueueConfig {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Routes messages on subjects matching `pattern` into the queue.
    pub fn bind(mut self, pattern: impl AsRef<str>) -> Self {
        self.bindings.push(Binding {
            pattern: pattern.as_ref().into(),
            filter: None,
        });
        self
    }

    /// Routes messages matching `pattern` and the content filter `filter`.
    pub fn bind_filtered(mut self, pattern: impl AsRef<str>, filter: impl AsRef<str>) -> Self {
        self.bindings.push(Binding {
            pattern: pattern.as_ref().into(),
            filter: Some(filter.as_ref().into()),
        });
        self
    }

    /// Delivery attempts before a message is dead-lettered.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// Time a consumer has to settle a delivery before it is redelivered.
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.ack_timeout = Some(t);
        self
    }

    /// Queue that receives messages that are rejected, expire, overflow or exceed
    /// `max_deliver`. Without one they are dropped (and counted).
    pub fn dead_letter(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter = Some(queue.into());
        self
    }

    /// Age after which a waiting message expires.
    pub fn ttl(mut self, t: Duration) -> Self {
        self.ttl = Some(t);
        self
    }

    /// Most messages in the queue, and what to do beyond.
    pub fn max_length(mut self, n: u64, overflow: Overflow) -> Self {
        self.max_length = Some(n);
        self.overflow = overflow;
        self
    }

    /// In a cluster: keeps the queue on `n` nodes (1 to the cluster's size); a publish
    /// is confirmed once a majority of them holds it. Declared with QUEUE_CREATE, which
    /// servers older than queue groups do not know (`unknown_frame_type`).
    pub fn replicas(mut self, n: u8) -> Self {
        self.replicas = Some(n);
        self
    }

    /// The frame that declares the queue.
    fn frame(&self, id: u32) -> Result<Frame, Error> {
        let declare = self.declare(id)?;
        Ok(match self.replicas {
            None => declare.into(),
            Some(0) => return Err(Error::Usage("a queue needs at least 1 replica".into())),
            Some(replicas) => QueueCreate { declare, replicas }.into(),
        })
    }

    fn declare(&self, id: u32) -> Result<QueueDeclare, Error> {
        validate_name(&self.name).map_err(Error::Usage)?;
        if let Some(dl) = &self.dead_letter {
            validate_name(dl).map_err(|e| Error::Usage(format!("dead-letter queue: {e}")))?;
        }
        let ms = |d: Duration, what: &str| {
            let ms = u64::try_from(d.as_millis())
                .map_err(|_| Error::Usage(format!("{what} is too long")))?;
            if ms == 0 {
                return Err(Error::Usage(format!("{what} must be at least 1 ms")));
            }
            Ok(ms)
        };
        let ack_timeout_ms = match self.ack_timeout {
            Some(d) => u32::try_from(ms(d, "ack_timeout")?)
                .map_err(|_| Error::Usage("ack_timeout must be under 49 days".into()))?,
            None => 0,
        };
        Ok(QueueDeclare {
            id,
            name: self.name.as_str().into(),
            bindings: self.bindings.clone(),
            options: QueueOptions {
                max_deliver: self.max_deliver.unwrap_or(0),
                ack_timeout_ms,
                dead_letter: self.dead_letter.as_deref().map(Into::into),
                ttl_ms: self.ttl.map(|d| ms(d, "ttl")).transpose()?.unwrap_or(0),
                max_length: self.max_length.unwrap_or(0),
                overflow: self.overflow,
            },
        })
    }
}

impl Inner {
    /// Sends a queue request and waits for its answer. In a cluster a node that does
    /// not run the queues answers `not_leader`: the client moves to the node that does
    /// and the request is asked again there, within the request timeout.
    pub(crate) async fn admin(
        &self,
        kind: AdminKind,
        frame: impl Fn(u32) -> Result<tern_codec::Frame, Error>,
    ) -> Result<AdminReply, Error> {
        let inner = self;
        let deadline = tokio::time::Instant::now() + inner.options.request_timeout;
        loop {
            let mut moved = inner.generation.subscribe();
            let id = inner.next_id();
            let frame = frame(id)?;
            let (reply, rx) = oneshot::channel();
            inner.state().add_request(
                id,
                Request::Admin {
                    kind,
                    infos: Vec::new(),
                    reply,
                },
            );
            if let Err(e) = inner.out.push_control(&frame) {
                inner.state().cancel_request(id);
                return Err(e);
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Err(e))) if e.code() == Some(ErrorCode::NotLeader) => {
                    match tokio::time::timeout_at(deadline, moved.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => return Err(e),
                    }
                }
                Ok(Ok(answer)) => return answer,
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    inner.state().cancel_request(id);
                    return Err(Error::Timeout);
                }
            }
        }
    }

    /// Learns the client addresses of the cluster's members (CLUSTER_QUERY), so that
    /// a client given one node can reconnect to another when that one dies. A node
    /// learns the others' addresses from them, so one that just started may not know
    /// them all yet (or not even the members, before it has joined): then it is asked
    /// again, after 1 s, 2 s, 4 s, then every 5 s (a small query, and only while an
    /// address is missing), for as long as this connection lasts. Nothing to learn
    /// from a node that runs alone, or from a server older than the query.
    pub(crate) async fn learn_cluster(&self) {
        let connection = *self.generation.borrow();
        let mut pause = Duration::from_secs(1);
        loop {
            let info = match self
                .admin(AdminKind::Ok, |id| Ok(ClusterQuery { id }.into()))
                .await
            {
                Ok(AdminReply::Cluster(info)) => info,
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot learn the cluster's nodes");
                    return;
                }
            };
            // A node that runs alone answers node 0; one that has not joined its
            // cluster yet answers no members: that is nothing known yet.
            let known = info.node_id == 0
                || (!info.members.is_empty()
                    && info.members.iter().all(|m| m.client_addr.is_some()));
            let addrs = info.members.into_iter().filter_map(|m| m.client_addr);
            self.servers().learn(addrs.map(|a| a.to_string()));
            if known {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.closing.cancelled() => return,
            }
            if *self.generation.borrow() != connection {
                return;
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

impl Client {
    /// Creates a queue, or checks that it exists with these bindings and options.
    ///
    /// # Errors
    ///
    /// `queue_exists` when it exists with other bindings or options; `invalid_queue`
    /// for a bad name, pattern or option.
    pub async fn declare_queue(&self, config: &QueueConfig) -> Result<QueueInfo, Error> {
        match self
            .inner
            .admin(AdminKind::Info, |id| config.frame(id))
            .await?
        {
            AdminReply::Info(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a queue and every message in it.
    ///
    /// # Errors
    ///
    /// `queue_not_found`.
    pub async fn delete_queue(&self, name: &str) -> Result<(), Error> {
        self.inner
            .admin(AdminKind::Ok, |id| {
                Ok(QueueDelete {
                    id,
                    name: name.into(),
                }
                .into())
            })
            .await
            .map(|_| ())
    }

    /// A queue's options and counters.
    ///
    /// # Errors
    ///
    /// `queue_not_found`.
    pub async fn queue_info(&self, name: &str) -> Result<QueueInfo, Error> {
        if name.is_empty() {
            return Err(Error::Usage("a queue name is needed".into()));
        }
        match self
            .inner
            .admin(AdminKind::Info, |id| {
                Ok(QueueQuery {
                    id,
                    name: name.into(),
                }
                .into())
            })
            .await?
        {
            AdminReply::Info(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Every queue's options and counters, ordered by name.
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        match self
            .inner
            .admin(AdminKind::List, |id| {
                Ok(QueueQuery {
                    id,
                    name: "".into(),
                }
                .into())
            })
            .await?
        {
            AdminReply::List(infos) => Ok(infos),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes every waiting message of a queue. Returns how many.
    ///
    /// # Errors
    ///
    /// `queue_not_found`.
    pub async fn purge_queue(&self, name: &str) -> Result<u64, Error> {
        self.count(|id| {
            QueuePurge {
                id,
                name: name.into(),
            }
            .into()
        })
        .await
    }

    /// Moves up to `max` waiting messages (all with `None`), oldest first, from one
    /// queue to another — to replay a dead-letter queue, say. Returns how many.
    ///
    /// # Errors
    ///
    /// `queue_not_found`, or `invalid_queue` when both are the same queue.
    pub async fn move_messages(
        &self,
        from: &str,
        to: &str,
        max: Option<u64>,
    ) -> Result<u64, Error> {
        self.count(|id| {
            QueueMove {
                id,
                from: from.into(),
                to: to.into(),
                max: max.unwrap_or(0),
            }
            .into()
        })
        .await
    }

    /// What the server is and how it is doing: version, uptime, listeners,
    /// connections, queues, store size, sync policy.
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        match self
            .inner
            .admin(AdminKind::Ok, |id| Ok(ServerQuery { id }.into()))
            .await?
        {
            AdminReply::Server(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// The cluster as the connected node sees it: its id, the term, the leader, and
    /// every member with its addresses, role and (from the leader) lag. A server that
    /// runs alone answers node 0 with no members.
    ///
    /// # Errors
    ///
    /// The connection failed, or the server predates clusters (`unknown_frame_type`).
    pub async fn cluster_info(&self) -> Result<ClusterInfo, Error> {
        match self
            .inner
            .admin(AdminKind::Ok, |id| Ok(ClusterQuery { id }.into()))
            .await?
        {
            AdminReply::Cluster(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// The cluster's Raft groups as the connected node knows them: each one's leader,
    /// members (the nodes holding a replica of its queues) and queues. Group 1 holds
    /// the membership and the queue directory. A server that runs alone has none.
    ///
    /// # Errors
    ///
    /// The connection failed, or the server predates groups (`unknown_frame_type`).
    pub async fn cluster_groups(&self) -> Result<Vec<GroupInfo>, Error> {
        match self
            .inner
            .admin(AdminKind::Ok, |id| Ok(GroupsQuery { id }.into()))
            .await?
        {
            AdminReply::Groups(info) => Ok(info.groups),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds node `node_id`, whose peer listener is at `peer_addr`, to the cluster: it
    /// catches up as a learner, then becomes a voter. The node must be running and
    /// started to join (`--cluster-join`). Needs the `admin` permission.
    ///
    /// # Errors
    ///
    /// `membership_refused` (unreachable, a member already, the server runs alone),
    /// `permission_denied`, or [`Error::Timeout`] while a large catch-up goes on (the
    /// change continues; [`Client::cluster_info`] shows it).
    pub async fn add_node(&self, node_id: u64, peer_addr: &str) -> Result<(), Error> {
        self.change_membership(ClusterOp::Add {
            node_id,
            peer_addr: peer_addr.into(),
        })
        .await
    }

    /// Removes node `node_id` from the cluster (and so from every queue's replicas).
    /// Needs the `admin` permission.
    ///
    /// # Errors
    ///
    /// `membership_refused` (not a member, the last voter, the server runs alone),
    /// `permission_denied`.
    pub async fn remove_node(&self, node_id: u64) -> Result<(), Error> {
        self.change_membership(ClusterOp::Remove { node_id }).await
    }

    async fn change_membership(&self, op: ClusterOp) -> Result<(), Error> {
        self.inner
            .admin(AdminKind::Ok, |id| {
                Ok(ClusterChange { id, op: op.clone() }.into())
            })
            .await
            .map(|_| ())
    }

    async fn count(&self, frame: impl Fn(u32) -> tern_codec::Frame) -> Result<u64, Error> {
        match self
            .inner
            .admin(AdminKind::Count, |id| Ok(frame(id)))
            .await?
        {
            AdminReply::Count(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &AdminReply) -> Error {
    Error::Protocol(format!("unexpected answer to a queue request: {reply:?}"))
}
