//! A leader's lease: how long after a majority last answered it a leader may still
//! act alone — run the queues' tasks, deliver, answer what a queue holds.
//!
//! openraft 0.9 keeps a leader leading for as long as nobody tells it otherwise: one
//! cut off from the others goes on believing it leads until it hears a higher term,
//! which may be seconds after another was elected. Entries it appends cannot commit,
//! but the queues' tasks act without the log: such a node delivered messages the new
//! leader had acked meanwhile, and answered a queue's depth from before the cut (the
//! chaos test drained a stale queue from it once, and counted 208 confirmed messages
//! lost). So a leader runs the queues only while it holds a lease, as etcd's and
//! TiKV's leases do.
//!
//! Why it is safe: a follower votes for nobody until its leader's lease has passed
//! since it last heard from it (openraft's `election_timeout_max`, [`FOLLOWER_LEASE`]),
//! and the time openraft counts a majority's answer from is when the leader *sent*
//! what they answered — before any of them heard it. So no other node can be elected
//! within 1 s of that time; [`LEASE`] stops short of it by the time one check may come
//! late and a margin for the report's delay. Every node runs on the same kind of clock
//! (monotonic; rates of real machines differ by far less than the margin).
//!
//! openraft keeps when it last heard its leader in memory only: a follower restarted
//! within the lease would vote at once. So a member that voted or followed before
//! (it has a vote on disk) votes for nobody until [`FOLLOWER_LEASE`] after its start
//! ([`VoteFence`]). The simulation found it: a follower acked a leader, crashed,
//! came back and elected another while the first still held its lease.

use std::time::Duration;

use tokio::time::Instant;

/// How long after it last heard its leader a follower votes for nobody (openraft's
/// `election_timeout_max`).
pub(crate) const FOLLOWER_LEASE: Duration = Duration::from_millis(1000);

/// How long after the majority's last answer (its send time) the leader acts alone.
/// Below the followers' 1 s lease by [`CHECK`] and a margin.
pub(crate) const LEASE: Duration = Duration::from_millis(800);

/// How often the lease is checked when Raft reports nothing new.
pub(crate) const CHECK: Duration = Duration::from_millis(100);

/// When a majority last answered this node as leader, as far as Raft reported.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Lease {
    acked: Option<Instant>,
}

impl Lease {
    /// Raft reported at `now` that a majority answered `millis` ago (openraft's
    /// `millis_since_quorum_ack`; `None`: this node does not lead, or no majority has
    /// answered it yet — as for a node that restarts on a vote it won before).
    pub fn reported(&mut self, millis: Option<u64>, now: Instant) {
        self.acked = millis.and_then(|ms| now.checked_sub(Duration::from_millis(ms)));
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.acked
            .is_some_and(|acked| now.saturating_duration_since(acked) < LEASE)
    }

    /// Until when the lease holds, if it was ever granted: for the simulation's check
    /// that no two nodes hold one at once.
    #[cfg(test)]
    pub fn until(&self) -> Option<Instant> {
        self.acked.map(|acked| acked + LEASE)
    }

    /// Since when, by the last report, a majority answered.
    #[cfg(test)]
    pub fn since(&self) -> Option<Instant> {
        self.acked
    }
}

/// Keeps a restarted member from voting while a lease it granted before it stopped
/// may still hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VoteFence {
    until: Option<Instant>,
}

impl VoteFence {
    /// For a member starting now: `before` says whether it voted or followed before.
    pub fn starting(before: bool) -> Self {
        Self {
            until: before.then(|| Instant::now() + FOLLOWER_LEASE),
        }
    }

    /// Whether it may answer a vote request at `now`.
    pub fn may_vote(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_for_its_length_after_the_majority_answered() {
        let now = Instant::now();
        let mut lease = Lease::default();
        assert!(!lease.holds(now), "never answered");
        lease.reported(Some(300), now);
        assert!(lease.holds(now));
        assert!(lease.holds(now + LEASE - Duration::from_millis(301)));
        assert!(!lease.holds(now + LEASE - Duration::from_millis(300)));
        lease.reported(None, now);
        assert!(!lease.holds(now), "no longer leading");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_member_votes_once_any_lease_it_granted_is_over() {
        let fresh = VoteFence::starting(false);
        let restarted = VoteFence::starting(true);
        assert!(fresh.may_vote(Instant::now()), "it never granted one");
        assert!(!restarted.may_vote(Instant::now()));
        tokio::time::advance(FOLLOWER_LEASE - Duration::from_millis(1)).await;
        assert!(!restarted.may_vote(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(restarted.may_vote(Instant::now()));
    }

    #[test]
    fn a_silent_raft_does_not_renew_the_lease() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.reported(Some(0), now);
        // No report since: the same answer, further in the past.
        assert!(!lease.holds(now + LEASE));
    }
}
