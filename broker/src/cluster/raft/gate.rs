//! The election gate: a pre-vote, which openraft 0.9 lacks, by other means. A node
//! campaigns only while a majority of the voters, itself included, would vote for it
//! as far as logs go.
//!
//! A node that cannot win campaigns anyway in openraft, and costs the others time:
//! * Cut off from the others, it campaigns again and again with ever higher terms; when
//!   the partition heals, that term unseats the leader the others kept (its
//!   AppendEntries is answered with the higher vote).
//! * Behind the others (just restarted, or back from a partition), it is refused for its
//!   log, and each campaign takes a term the node that can win then cannot have; and a
//!   node refused for its log carries openraft's "seen a greater log" flag, which delays
//!   its next campaign by 2 s even once it has caught up and is the one that should win.
//!
//! tests/chaos.rs saw 4–7 s elections from both. A node whose leader died still hears
//! from the other survivors within ~1 s, before its election timeout (1.5 s at the
//! earliest), and the one with the greatest log among a majority always may campaign.
//!
//! The question costs a call to every other voter, per group, four times a second: with
//! a dozen groups on a node that was most of an idle cluster's traffic. It only matters
//! once the leader has gone quiet — a follower that hears its leader does not campaign —
//! so a follower asks that often only after [`QUIET`] without an AppendEntries it
//! accepted ([`Heard`]), which leaves a full second before its earliest campaign; while
//! it hears its leader it asks every [`RECHECK`], so that what it reports
//! (`tern_raft_electable`) follows it catching up or falling behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::raft::AppendEntriesResponse;
use openraft::ServerState;
use tokio::time::Instant;

/// How often a node asks the voters for their last log id, how long it waits for an
/// answer, and how long an answer counts.
const ASK_EVERY: Duration = Duration::from_millis(250);
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_millis(500);
const ANSWER_FRESH: Duration = Duration::from_millis(750);

/// How long a follower hears nothing from its leader before it asks: two heartbeats
/// missed. It campaigns 1.5 s after the last one at the earliest (`raft_config`), so its
/// answers, asked within [`ASK_EVERY`] and answered within [`ASK_TIMEOUT`], are in by then.
const QUIET: Duration = Duration::from_millis(500);

/// How often a follower that hears its leader asks all the same.
const RECHECK: Duration = Duration::from_secs(2);

/// When this node's member of a group last accepted an AppendEntries: from a leader
/// whose vote it did not refuse, heartbeats included.
#[derive(Debug, Default)]
pub(crate) struct Heard(Mutex<Option<Instant>>);

impl Heard {
    /// Notes what this node answered an AppendEntries with.
    pub fn answered<N: openraft::NodeId>(&self, response: &AppendEntriesResponse<N>) {
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    /// Whether a leader was heard within [`QUIET`] of `now`.
    fn lately(&self, now: Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| now.saturating_duration_since(at) < QUIET)
    }
}

/// Runs the gate of `raft` until it stops: `log` is this node's; `ask` gets a peer's
/// last log id (`None`: no answer); `heard` says when a leader last reached this node;
/// `electable` tells the node's status what was decided.
pub(crate) async fn campaign_only_when_electable<C, L, A, F>(
    raft: openraft::Raft<C>,
    mut log: L,
    ask: A,
    heard: Arc<Heard>,
    electable: Arc<AtomicBool>,
) where
    C: openraft::RaftTypeConfig,
    L: openraft::storage::RaftLogStorage<C>,
    A: Fn(C::NodeId) -> F,
    F: std::future::Future<Output = Option<Option<openraft::LogId<C::NodeId>>>> + Send + 'static,
{
    type Answered<C> = (
        Instant,
        Option<openraft::LogId<<C as openraft::RaftTypeConfig>::NodeId>>,
    );
    let mut answers: BTreeMap<C::NodeId, Answered<C>> = BTreeMap::new();
    let mut asked_at: Option<Instant> = None;
    loop {
        let (me, voters, leads) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<C::NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.id.clone(), voters, m.state == ServerState::Leader)
        };
        // A leader does not campaign, nor does a follower its leader keeps reaching.
        let now = Instant::now();
        let due = !heard.lately(now) || asked_at.is_none_or(|at| now - at >= RECHECK);
        if !leads && due {
            asked_at = Some(now);
            let asked: Vec<_> = voters
                .iter()
                .filter(|v| **v != me)
                .map(|v| {
                    let answer = tokio::time::timeout(ASK_TIMEOUT, ask(v.clone()));
                    (v.clone(), tokio::spawn(answer))
                })
                .collect();
            for (voter, answer) in asked {
                if let Ok(Ok(Some(last))) = answer.await {
                    answers.insert(voter, (Instant::now(), last));
                }
            }
            let Ok(mine) = log.get_log_state().await.map(|s| s.last_log_id) else {
                // The log cannot be read, and Raft stops on that too: openraft's own
                // rules from here.
                raft.runtime_config().elect(true);
                electable.store(true, Ordering::Relaxed);
                return;
            };
            let now = Instant::now();
            let would_vote = voters
                .iter()
                .filter(|v| {
                    **v == me
                        || answers
                            .get(v)
                            .is_some_and(|(at, last)| now - *at < ANSWER_FRESH && *last <= mine)
                })
                .count();
            let may = 2 * would_vote > voters.len();
            raft.runtime_config().elect(may);
            electable.store(may, Ordering::Relaxed);
        }
        tokio::time::sleep(ASK_EVERY).await;
        if raft.metrics().has_changed().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_leader_is_heard_until_it_is_quiet_or_refused() {
        let heard = Heard::default();
        assert!(!heard.lately(Instant::now()), "never heard");
        heard.answered::<u64>(&AppendEntriesResponse::Success);
        assert!(heard.lately(Instant::now()));
        tokio::time::advance(QUIET).await;
        assert!(!heard.lately(Instant::now()), "quiet for {QUIET:?}");
        heard.answered::<u64>(&AppendEntriesResponse::Conflict);
        assert!(heard.lately(Instant::now()), "a conflict is a leader heard");
        tokio::time::advance(QUIET).await;
        heard.answered(&AppendEntriesResponse::HigherVote(Vote::new(9, 1)));
        assert!(!heard.lately(Instant::now()), "a stale leader is not");
        heard.answered(&AppendEntriesResponse::PartialSuccess(Some(LogId::new(
            CommittedLeaderId::new(1, 1),
            3,
        ))));
        assert!(heard.lately(Instant::now()));
    }
}
