//! The journal's [`Log`] in a cluster: each group commit's entry is proposed to the
//! group ([`Replica::propose`]) and confirmed once a majority holds it durably and it
//! is applied — on every node, by the replicated state machine, which also hands the
//! queues their effects. So the journal here only learns the answers.
//!
//! What a node may propose depends on whether it leads. Publishes, declares and deletes
//! come from sessions on any node: a follower forwards them to the leader. Settles,
//! delivery counts and dead-letter moves come from the queues' tasks, which run on the
//! leader only; one sent by a task that has just lost the lead is refused, not
//! forwarded: the new leader's tasks hold the messages now, and an ack that was not
//! applied leaves the message to be redelivered (at least once), never acked twice over
//! a delivery the new leader made. The dedup window's expiry is the leader's business.

use std::sync::Arc;
use std::time::Instant;

use tern_codec::Envelope;
use tern_storage::Store;

use super::raft::{ProposeError, Replica};
use crate::filter::MessageView;
use crate::journal::{Appending, Log, LogError};
use crate::queue::machine::{Command, Effects, Entry, Outcome, QueueError};
use crate::router::Router;
use crate::store_health::StoreHealth;

/// Picks, with this node's router, the queues of the publishes left to the leader
/// (`Command::Publish::route_on_leader`): called by the leader just before it appends
/// an entry, when its view of the queues holds every declare applied so far.
pub(crate) fn route(router: &Router, entry: &mut Entry) {
    for command in &mut entry.commands {
        if let Command::Publish {
            queues,
            route_on_leader,
            envelope,
            ..
        } = command
        {
            if !*route_on_leader {
                continue;
            }
            // Encoded by a session from a valid frame; one that would not decode takes
            // no queue.
            if let Ok(env) = Envelope::decode_bytes(envelope.clone()) {
                let view = MessageView::new(&env.subject, &env.headers, &env.payload);
                *queues = router.lookup_uncached(&env.subject).queues(&view);
            }
            *route_on_leader = false;
        }
    }
}

/// Message bytes one entry carries at most (about: a batch stops past it). openraft
/// gives each AppendEntries the heartbeat interval to come back, the follower's fsync
/// included, and retries one that does not after a back-off: entries of many MiB (a
/// busy journal gathers up to 4,096 publishes) stalled replication for seconds. With
/// `max_payload_entries` entries per call this bounds a call to a few MiB.
const MAX_ENTRY_BYTES: usize = 1 << 20;

/// Entries a leader keeps on their way at once (`Log::depth`).
const DEPTH: usize = 4;

/// The journal's log over the cluster's group.
pub(crate) struct ReplicatedLog {
    pub replica: Arc<Replica>,
    /// From proposing an entry to its being applied, here or through the leader.
    pub commit_latency: metrics::Histogram,
    pub router: Arc<Router>,
    pub store: Arc<dyn Store>,
    pub health: Arc<StoreHealth>,
}

/// Whether a follower may forward `command` to the leader.
fn forwardable(command: &Command) -> bool {
    matches!(
        command,
        Command::Publish { .. } | Command::Declare { .. } | Command::Delete { .. }
    )
}

impl Log for ReplicatedLog {
    async fn append(&mut self, entry: Entry, _awaited: bool) -> Appending {
        if entry.commands.is_empty() {
            return Box::pin(std::future::ready(Ok(Effects::answered(Vec::new()))));
        }
        let started = Instant::now();
        let latency = self.commit_latency.clone();
        if self.replica.leads() {
            // Raft keeps the order of what it took: the next entry need not wait.
            let mut here = entry;
            route(&self.router, &mut here);
            let proposed = self.replica.submit(here).await;
            let replica = Arc::clone(&self.replica);
            return Box::pin(async move {
                let answers = proposed.await.map_err(|e| refused(&replica, e))?;
                latency.record(started.elapsed());
                Ok(Effects::answered(answers.0))
            });
        }
        // A follower forwards one entry at a time: the leader would not keep the order
        // of several on their way over the link.
        let forwarded = self.forward(entry).await;
        if forwarded.is_ok() {
            latency.record(started.elapsed());
        }
        Box::pin(std::future::ready(forwarded))
    }

    /// A leader keeps a few entries on their way: its log's fsync, its followers' and
    /// its state machine's each work on another.
    fn depth(&self) -> usize {
        if self.replica.leads() {
            DEPTH
        } else {
            1
        }
    }

    fn refuses_new_messages(&self) -> Option<String> {
        self.health.check_disk(&*self.store)
    }

    fn max_entry_bytes(&self) -> usize {
        MAX_ENTRY_BYTES
    }

    /// Raft syncs each append before it counts it.
    fn sync_due(&self) -> Option<Instant> {
        None
    }

    fn sync(&mut self) -> Result<(), LogError> {
        Ok(())
    }

    /// A checkpoint of the store: at shutdown, so that a restart applies little again.
    fn compact(&mut self) -> Result<(), LogError> {
        self.store
            .flush()
            .map_err(|e| LogError::SyncFailed(e.to_string()))
    }
}

/// What a proposal's failure tells the journal.
fn refused(replica: &Replica, e: ProposeError) -> LogError {
    match e {
        ProposeError::NoLeader { .. } => LogError::NoLeader(replica.redirect()),
        ProposeError::Failed(why) => LogError::Refused(why),
    }
}

impl ReplicatedLog {
    /// Has the leader append what a follower may forward of `entry`; the rest is
    /// refused (`forwardable`).
    async fn forward(&mut self, entry: Entry) -> Result<Effects, LogError> {
        let leader = match self.replica.leader() {
            Some(leader) if leader != self.replica.node() => leader,
            _ => {
                return Err(refused(
                    &self.replica,
                    ProposeError::NoLeader { leader: None },
                ))
            }
        };
        let forwarded: Vec<Command> = entry
            .commands
            .iter()
            .filter(|c| forwardable(c))
            .cloned()
            .collect();
        let mut got = if forwarded.is_empty() {
            Vec::new().into_iter()
        } else {
            self.replica
                .forward(
                    leader,
                    Entry {
                        commands: forwarded,
                    },
                )
                .await
                .map_err(|e| refused(&self.replica, e))?
                .0
                .into_iter()
        };
        let answers = entry
            .commands
            .iter()
            .map(|c| match c {
                c if forwardable(c) => got.next().unwrap_or(Err(QueueError::NotLeader)),
                Command::ForgetDedup { .. } => Ok(Outcome::default()),
                _ => Err(QueueError::NotLeader),
            })
            .collect();
        Ok(Effects::answered(answers))
    }
}
