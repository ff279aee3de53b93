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
use crate::journal::{Log, LogError};
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
    async fn append(&mut self, entry: &Entry, _awaited: bool) -> Result<Effects, LogError> {
        if entry.commands.is_empty() {
            return Ok(Effects::answered(Vec::new()));
        }
        let started = Instant::now();
        let applied = self.propose(entry).await;
        if applied.is_ok() {
            self.commit_latency.record(started.elapsed());
        }
        applied
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

impl ReplicatedLog {
    /// Proposes `entry` here if this node leads, else forwards what it may.
    async fn propose(&mut self, entry: &Entry) -> Result<Effects, LogError> {
        let refused = |e: ProposeError| match e {
            ProposeError::NoLeader { .. } => LogError::NoLeader(self.replica.redirect()),
            ProposeError::Failed(why) => LogError::Refused(why),
        };
        let mut here = entry.clone();
        if self.replica.leads() {
            route(&self.router, &mut here);
        }
        match self.replica.propose_here(here).await {
            Ok(answers) => Ok(Effects::answered(answers.0)),
            Err(ProposeError::NoLeader {
                leader: Some(leader),
            }) if leader != self.replica.node() => {
                // A follower forwards what it may.
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
                        .map_err(refused)?
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
            Err(e) => Err(refused(e)),
        }
    }
}
