//! The durable queues as the rest of the broker holds them: the store, the journal
//! that is its only writer, the registry of queues with their tasks, the exactly-once
//! window. Opened from the data directory — the write-ahead log replayed, every queue
//! recovered — and stopped at shutdown, after the connections.
//!
//! Sessions reach the durable queues only through this: a handler asks `journal`,
//! `queues` and `dedup`; metrics and server info read `store` and `health`.
//!
//! Alone, the journal writes through the local write-ahead log ([`StoreLog`]); in a
//! cluster, through the replicated log ([`ReplicatedLog`]), and the replica's state
//! machine applies the entries (`cluster::raft`).

use std::sync::{Arc, Mutex, MutexGuard};

use tern_storage::{SledStore, StorageError, Store, Wal};
use tokio_util::sync::CancellationToken;

use crate::cluster::hosting::Replicas;
use crate::cluster::pubsub::PubSub;
use crate::cluster::raft::{Recovery, Replica};
use crate::cluster::replicated::{Proposer, ReplicatedLog};
use crate::cluster::Node;
use crate::config::cluster::ClusterConfig;
use crate::config::{Config, SyncPolicy};
use crate::dedup::DedupWindow;
use crate::journal::{Journal, Log, LogMetrics, Op, StoreLog, Writer, WAL_BYTES};
use crate::queue::recovery;
use crate::queue::runtime::QueueRuntime;
use crate::queue::{GroupId, Queues, FIRST_GROUP};
use crate::router::Router;
use crate::store_health::StoreHealth;
use crate::Error;

/// The write-ahead log's file in the data directory.
const WAL_FILE: &str = "wal";

/// The durable queues of one server.
#[derive(Debug)]
pub(crate) struct Durable {
    pub store: Arc<dyn Store>,
    /// Whether the store takes new messages (the disk alarm), for `/healthz`.
    pub health: Arc<StoreHealth>,
    pub journal: Journal,
    pub queues: Arc<Queues>,
    /// The queues' tasks, started and stopped as entries are applied.
    runtime: Arc<QueueRuntime>,
    /// The exactly-once window. A std `Mutex`: one hash-set operation per QoS 2
    /// publish, never held across an `.await`.
    pub dedup: Arc<Mutex<DedupWindow>>,
    /// The journal thread, joined at shutdown.
    journal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This node's member of the cluster's first group, in a cluster.
    pub replica: Option<Arc<Replica>>,
    /// Its members of every group.
    replicas: Option<Arc<Replicas>>,
    /// How its entries reach the groups (and where the others' leaders are).
    pub proposer: Option<Arc<Proposer>>,
    /// In a cluster: pub/sub across the nodes. Not durable, but started with the
    /// replica, whose peer listener it shares.
    pub pubsub: Option<Arc<PubSub>>,
}

/// The metrics the durable queues record (the server's `Metrics` hands them out).
pub(crate) struct DurableMetrics {
    pub log: LogMetrics,
    pub disk_alarm: metrics::Gauge,
    pub disk_alarms: metrics::Counter,
    pub confirm_latency: metrics::Histogram,
    pub delivery_latency: metrics::Histogram,
    pub raft_commit: metrics::Histogram,
}

impl Durable {
    /// Opens the store in `config.data_dir` and starts the journal and the queues
    /// (bound in `router`): alone, after replaying the write-ahead log and recovering
    /// every queue; in a cluster, as a replica of the group (`shutdown` stops it).
    ///
    /// Blocks the calling thread on file I/O while the store is read.
    ///
    /// # Errors
    ///
    /// The store cannot be opened or read, the journal thread or the cluster cannot
    /// start.
    pub async fn open(
        config: &Config,
        metrics: DurableMetrics,
        router: Arc<Router>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        if let Some(cluster) = &config.cluster {
            return Self::open_replica(config, cluster, metrics, router, shutdown).await;
        }
        let store_config = &config.store;
        let store: Arc<dyn Store> = Arc::new(SledStore::open_with_cache(
            &config.data_dir,
            store_config.cache_bytes,
        )?);
        match store_config.sync {
            SyncPolicy::Always => {}
            other => tracing::warn!(
                "sync = {other}: confirmed messages can be lost if the broker is killed or the machine loses power"
            ),
        }
        let health = store_health(config, &metrics);
        let wal =
            Wal::open(&config.data_dir.join(WAL_FILE), WAL_BYTES).map_err(StorageError::Wal)?;
        let (log, recovered) = StoreLog::open(
            Arc::clone(&store),
            wal,
            &config.data_dir,
            |store| {
                recovery::recover(
                    store,
                    &config.data_dir,
                    config.queues.memory,
                    config.limits.filter,
                )
            },
            Arc::clone(&health),
            store_config.sync,
            metrics.log,
        )?;
        let mut window = dedup_window(config);
        for e in &recovered.dedup {
            window.restore(e);
        }
        let dedup = Arc::new(Mutex::new(window));
        let runtime = Arc::new(QueueRuntime::new(
            router,
            Arc::clone(&store),
            config.queues.memory,
            config.limits.filter,
            metrics.delivery_latency,
            false,
        ));
        let durable = Self::assemble(
            log,
            store,
            health,
            dedup,
            runtime,
            metrics.confirm_latency,
            None,
        )?;
        let found = recovered.queues.len();
        durable.runtime.reset(FIRST_GROUP, recovered.queues).await;
        if found > 0 {
            tracing::info!(queues = found, "recovered queues from the store");
        }
        // Metas left over belong to messages settled before a crash cut their clean-up
        // short; forget them now.
        for (queue, seq) in recovered.stale_metas {
            durable.journal.send(Op::Meta {
                queue,
                seq,
                meta: None,
                done: None,
            });
        }
        Ok(durable)
    }

    /// [`Durable::open`] for a node of a cluster.
    async fn open_replica(
        config: &Config,
        cluster: &ClusterConfig,
        metrics: DurableMetrics,
        router: Arc<Router>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let store_config = &config.store;
        let sled = Arc::new(
            SledStore::open_with_cache(&config.data_dir, store_config.cache_bytes)?.sync_bodies(),
        );
        let store: Arc<dyn Store> = Arc::clone(&sled) as Arc<dyn Store>;
        let health = store_health(config, &metrics);
        // Each node checks the pairs its own sessions see; the machine records them all.
        let dedup = Arc::new(Mutex::new(dedup_window(config)));
        let runtime = Arc::new(QueueRuntime::new(
            Arc::clone(&router),
            Arc::clone(&store),
            config.queues.memory,
            config.limits.filter,
            metrics.delivery_latency,
            true,
        ));
        let node = crate::cluster::start(
            cluster,
            sled,
            store_config.cache_bytes,
            Arc::clone(&runtime),
            Recovery {
                data_dir: config.data_dir.clone(),
                memory: config.queues.memory,
                filter_limits: config.limits.filter,
            },
            Arc::clone(&router),
            config.limits.subject,
            shutdown,
        )
        .await
        .map_err(|e| Error::Cluster(e.to_string()))?;
        let log = ReplicatedLog {
            proposer: Arc::clone(&node.proposer),
            commit_latency: metrics.raft_commit,
            runtime: Arc::clone(&runtime),
            store: Arc::clone(&store),
            health: Arc::clone(&health),
        };
        Self::assemble(
            log,
            store,
            health,
            dedup,
            runtime,
            metrics.confirm_latency,
            Some(node),
        )
    }

    /// Starts the journal over `log` and hands it to the queues: what both ways of
    /// opening end with.
    fn assemble<L: Log>(
        log: L,
        store: Arc<dyn Store>,
        health: Arc<StoreHealth>,
        dedup: Arc<Mutex<DedupWindow>>,
        runtime: Arc<QueueRuntime>,
        confirm_latency: metrics::Histogram,
        cluster: Option<Node>,
    ) -> Result<Self, Error> {
        let writer = Writer::new(
            log,
            Arc::clone(&health),
            Arc::clone(&dedup),
            confirm_latency,
            Arc::clone(&runtime),
        );
        let (journal, journal_thread) = writer.spawn()?;
        runtime.set_journal(journal.clone());
        Ok(Self {
            store,
            health,
            journal,
            queues: Arc::clone(&runtime.queues),
            runtime,
            dedup,
            journal_thread: Mutex::new(Some(journal_thread)),
            replica: cluster.as_ref().map(|n| Arc::clone(&n.replica)),
            replicas: cluster.as_ref().map(|n| Arc::clone(&n.replicas)),
            proposer: cluster.as_ref().map(|n| Arc::clone(&n.proposer)),
            pubsub: cluster.map(|n| n.pubsub),
        })
    }

    /// In a cluster: the address this node's clients connect to, which the other nodes
    /// give clients they redirect here.
    pub fn advertise(&self, addr: std::net::SocketAddr) {
        if let Some(replica) = &self.replica {
            replica.nodes.client_addr.set(addr.to_string());
        }
    }

    /// In a cluster, when this node does not run `group`'s queues: what to tell a
    /// client that asked it for what only their leader does (consume, queue info,
    /// purge, move).
    pub fn not_leader(&self, group: GroupId) -> Option<String> {
        let first = self.replica.as_ref()?;
        if self.runtime.runs_tasks(group) {
            return None;
        }
        match self.replicas.as_ref().and_then(|r| r.get(group)) {
            Some(replica) => Some(replica.redirect()),
            None => Some(match &self.proposer {
                Some(proposer) => proposer.redirect_to(group),
                None => first.redirect(),
            }),
        }
    }

    /// [`Durable::not_leader`] for the queue named `name`: its group's, or, when no
    /// queue has that name here, the first group's, whose leader knows every queue
    /// (this node may not have applied a declare yet).
    pub fn not_leader_of(&self, name: &str) -> Option<String> {
        let group = self.queues.get(name).map_or(FIRST_GROUP, |q| q.group);
        self.not_leader(group)
    }

    /// Stops every queue task, then the journal (which commits what it was sent and
    /// checkpoints the store).
    ///
    /// # Errors
    ///
    /// The final flush of the store failed.
    pub async fn stop(&self) -> Result<(), Error> {
        self.runtime.stop_all().await;
        let flushed = self.journal.shutdown().await;
        let thread = lock(&self.journal_thread).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(replicas) = &self.replicas {
            for replica in replicas.all() {
                replica.stop().await;
            }
        }
        flushed.map_err(|e| Error::Shutdown(format!("final store flush failed: {e}")))
    }
}

/// The disk alarm and write failures, as `/healthz` and the metrics report them.
fn store_health(config: &Config, metrics: &DurableMetrics) -> Arc<StoreHealth> {
    Arc::new(StoreHealth::new(
        config.store.min_free_bytes,
        metrics.disk_alarm.clone(),
        metrics.disk_alarms.clone(),
    ))
}

/// An empty exactly-once window of the configured size and age.
fn dedup_window(config: &Config) -> DedupWindow {
    DedupWindow::new(
        config.store.dedup_window,
        u64::try_from(config.store.dedup_age.as_millis()).unwrap_or(u64::MAX),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Changed by single pushes and takes: a poisoned lock still guards whole data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
