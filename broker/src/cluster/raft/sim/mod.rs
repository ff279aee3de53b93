//! Deterministic simulation of the replicated queues: several Raft nodes — openraft
//! with tern's timing ([`raft_config`]) over the queues' real [`Machine`] — in one
//! single-threaded tokio runtime on simulated time, with a simulated disk and network
//! whose every delay and fault comes from one seed.
//!
//! Producers publish with exactly-once pairs and send a publish again, with the same
//! pair, until it is confirmed, as tern-client does; meanwhile nodes crash (losing every
//! write no sync covered, [`disk`]), restart, and are partitioned. Every step checks
//! that each index holds the same entry on every node that applied it, and that a node
//! leads only on a committed vote for itself ([`check`], which says why "one leader per
//! term" is not openraft's rule); at the end the cluster is healed and every confirmed
//! publish must be in the history exactly once, and every node's machine the same.
//!
//! A failure names its seed: `TERN_SIM_SEED=<seed> cargo test -p tern-broker sim`
//! replays it (the run is a function of the seed: `a_seed_replays_the_same_run`).
//! `TERN_SIM_SEEDS=<n>` sets how many seeds a run tries.
//!
//! What it does not cover: tern's own storage and network adapters (`log_store`,
//! `state_machine`, `network`), which the real-process tests (tests/cluster.rs,
//! tests/chaos.rs) and the store's crash tests exercise.

mod check;
mod disk;
mod machine;
mod net;
mod runtime;

use std::io::Cursor;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, LogId, ServerState, SnapshotPolicy};
use tern_storage::DedupEntry;

use self::check::{Checker, Pair};
use self::disk::{Disk, SharedDisk, SimLog};
use self::machine::{SharedApplied, SimMachine};
use self::net::{Net, NodeNet, Station};
use self::runtime::SimRuntime;
use super::gate::{campaign_only_when_electable, Heard};
use super::lease::{Lease, VoteFence};
use super::{form, raft_config, Answers, Member, NodeId, PROPOSE_TIMEOUT};
use crate::queue::machine::tests::{def, envelope};
use crate::queue::machine::{Command, Entry};

openraft::declare_raft_types!(
    /// The simulation's Raft types: tern's entries and answers, snapshots in memory,
    /// randomness from the seed.
    pub(crate) SimConfig:
        D = Entry,
        R = Answers,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<SimConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SimRuntime,
);

type SimRaft = openraft::Raft<SimConfig>;

/// The run's randomness, shared by everything that draws from it.
#[derive(Debug, Clone)]
struct SimRng(Arc<Mutex<fastrand::Rng>>);

impl SimRng {
    fn u64(&self, range: Range<u64>) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).u64(range)
    }

    fn pick<T: Copy>(&self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.u64(0..items.len() as u64) as usize])
    }
}

/// Steps of the fault schedule, and their length in simulated time.
const STEPS: u32 = 150;
const STEP: Duration = Duration::from_millis(100);
/// How long the healed cluster may take to agree at the end, in simulated time.
const SETTLE: Duration = Duration::from_secs(60);
const PRODUCERS: u64 = 3;
/// The queue every publish goes to: the first declared.
const QUEUE: u32 = 1;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    pub nodes: usize,
    pub confirmed: usize,
    pub entries: u64,
    pub crashes: u32,
    pub partitions: u32,
    pub terms: usize,
    /// A digest of every event and its simulated time.
    pub trace: u64,
}

/// A simulated node: its disk outlives a crash, its Raft and machine do not.
struct Node {
    id: NodeId,
    disk: SharedDisk,
    running: Option<(SimRaft, SharedApplied)>,
}

struct Sim {
    rng: SimRng,
    net: Net,
    checker: Checker,
    config: Arc<Config>,
    nodes: Vec<Node>,
    crashes: u32,
}

/// tern's timing, with snapshots often enough that runs install them.
fn sim_config() -> Arc<Config> {
    let mut config = raft_config().expect("tern's raft configuration is valid");
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(64);
    config.max_in_snapshot_log_to_keep = 16;
    Arc::new(
        config
            .validate()
            .expect("the simulation's configuration is valid"),
    )
}

impl Sim {
    async fn start(&mut self, i: usize) -> Result<(), String> {
        let size = self.nodes.len() as NodeId;
        let node = &mut self.nodes[i];
        let (incarnation, first_start) = {
            let disk = disk::lock(&node.disk);
            (disk.incarnation, disk.vote.is_none())
        };
        let log = SimLog {
            disk: Arc::clone(&node.disk),
            incarnation,
            rng: self.rng.clone(),
        };
        // The same disk, for the election gate and for the others' questions.
        let (own, answering) = (log.clone(), log.clone());
        let sm = SimMachine::restore(node.id, Arc::clone(&node.disk), self.checker.clone())
            .map_err(|e| format!("node {} cannot restore its machine: {e}", node.id))?;
        let applied = Arc::clone(&sm.applied);
        let network = NodeNet {
            from: node.id,
            incarnation,
            net: self.net.clone(),
            rng: self.rng.clone(),
        };
        let prober = network.clone();
        let raft = SimRaft::new(node.id, Arc::clone(&self.config), network, log, sm)
            .await
            .map_err(|e| format!("node {} cannot start: {e}", node.id))?;
        let ask = move |to| prober.clone().last_log(to);
        let heard = Arc::new(Heard::default());
        tokio::spawn(campaign_only_when_electable(
            raft.clone(),
            own,
            ask,
            Arc::clone(&heard),
            Arc::default(),
        ));
        if first_start {
            // Every node forms the group on its first start, as ternd's do.
            let members = (1..=size)
                .map(|id| (id, Member::new(format!("node-{id}"))))
                .collect();
            // The lowest id at once, as ternd's first group.
            tokio::spawn(form(raft.clone(), members, 1));
        }
        let (checker, mut metrics) = (self.checker.clone(), raft.metrics());
        tokio::spawn(async move {
            let mut lease = Lease::default();
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state == ServerState::Leader {
                        let vote = m.vote;
                        checker.leads(
                            m.id,
                            vote.leader_id().get_term(),
                            vote.leader_id().voted_for(),
                            vote.is_committed(),
                        );
                    }
                    // As `follow_leadership` reads it.
                    let now = tokio::time::Instant::now();
                    lease.reported(m.millis_since_quorum_ack, now);
                    if let (true, Some(since), Some(until)) =
                        (lease.holds(now), lease.since(), lease.until())
                    {
                        checker.holds_lease(m.id, since, until);
                    }
                }
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        });
        self.net.lock().up.insert(
            node.id,
            Station {
                incarnation,
                raft: raft.clone(),
                log: answering,
                heard,
                fence: VoteFence::starting(!first_start),
            },
        );
        node.running = Some((raft, applied));
        self.checker.lock().event(&(node.id, "up"));
        Ok(())
    }

    /// The process dies between two steps: its connections drop, its memory is lost,
    /// and so is every write no sync covered.
    async fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some((raft, _)) = node.running.take() else {
            return;
        };
        self.net.lock().up.remove(&node.id);
        disk::lock(&node.disk).crash();
        self.crashes += 1;
        // Fenced off from the disk and the network, it stops in the background.
        tokio::spawn(async move { raft.shutdown().await });
        self.checker.lock().event(&(node.id, "crashed"));
    }

    fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_some())
            .collect()
    }

    fn down(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_none())
            .collect()
    }

    /// The node that leads, by its own metrics, if one does.
    fn leader(&self) -> Option<usize> {
        self.up().into_iter().find(|&i| {
            let (raft, _) = self.nodes[i].running.as_ref().expect("up");
            raft.metrics().borrow().state == ServerState::Leader
        })
    }

    fn violation(&self) -> Result<(), String> {
        match self.checker.lock().violations.first() {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    /// Crashes, restarts and partitions, one step at a time: at most a minority down,
    /// except for a power failure, which takes every node down and up again at once.
    async fn step(&mut self) -> Result<(), String> {
        tokio::time::sleep(STEP).await;
        self.violation()?;
        let n = self.nodes.len();
        let may_crash = self.down().len() < (n - 1) / 2;
        match self.rng.u64(0..100) {
            0..=2 if may_crash => {
                if let Some(i) = self.rng.pick(&self.up()) {
                    self.crash(i).await;
                }
            }
            3..=5 if may_crash => {
                if let Some(i) = self.leader() {
                    self.crash(i).await;
                }
            }
            6..=11 => {
                if let Some(i) = self.rng.pick(&self.down()) {
                    self.start(i).await?;
                }
            }
            12..=14 => {
                let mut wires = self.net.lock();
                for node in &self.nodes {
                    let side = self.rng.u64(0..2) as u8;
                    wires.side.insert(node.id, side);
                }
                let sides = format!("{:?}", wires.side);
                drop(wires);
                self.checker.lock().event(&sides);
            }
            15..=19 => {
                self.net.lock().side.clear();
                self.checker.lock().event(&"healed");
            }
            20 => {
                // A power failure: every node at once, then all come back.
                for i in self.up() {
                    self.crash(i).await;
                }
                for i in 0..n {
                    self.start(i).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Heals the network, restarts every node and waits until all have applied the
    /// leader's whole log.
    async fn settle(&mut self) -> Result<(), String> {
        self.net.lock().side.clear();
        for i in self.down() {
            self.start(i).await?;
        }
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            self.violation()?;
            if let Some(leader) = self.leader() {
                let (raft, _) = self.nodes[leader].running.as_ref().expect("up");
                let last = raft.metrics().borrow().last_log_index;
                let everywhere = self.nodes.iter().all(|node| {
                    let (raft, _) = node.running.as_ref().expect("all up");
                    raft.metrics().borrow().last_applied.map(|l| l.index) == last
                });
                if everywhere {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the healed cluster did not agree within {SETTLE:?}"
                ));
            }
            tokio::time::sleep(STEP).await;
        }
    }
}

fn publish(producer: &str, sequence: u64, at_ms: u64) -> Command {
    Command::Publish {
        queues: vec![QUEUE],
        route_on_leader: false,
        publisher: 1,
        envelope: envelope(&format!("{producer}-{sequence}")),
        enqueued_ms: at_ms,
        deadline_ms: None,
        dedup: Some(DedupEntry {
            producer: producer.into(),
            sequence,
            at_ms,
        }),
    }
}

type Confirmed = Arc<Mutex<Vec<(Pair, LogId<NodeId>)>>>;

/// Writes `entry` through whichever node leads, as a client that follows redirects and
/// tries again after a failure, until it is applied or `stop` is set.
async fn write(
    net: &Net,
    rng: &SimRng,
    entry: &Entry,
    stop: Option<&AtomicBool>,
) -> Option<(LogId<NodeId>, Answers)> {
    let mut hint: Option<NodeId> = None;
    while !stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        let raft = {
            let wires = net.lock();
            let up: Vec<NodeId> = wires.up.keys().copied().collect();
            hint.filter(|h| wires.up.contains_key(h))
                .or_else(|| rng.pick(&up))
                .and_then(|id| wires.up.get(&id).map(|station| station.raft.clone()))
        };
        let Some(raft) = raft else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // The way to the node: time passes on every try, also when a follower sends
        // the client to a leader that is gone.
        tokio::time::sleep(Duration::from_micros(rng.u64(200..2_000))).await;
        match tokio::time::timeout(PROPOSE_TIMEOUT, raft.client_write(entry.clone())).await {
            Ok(Ok(written)) => return Some((written.log_id, written.data)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))))
                if f.leader_id.is_some() =>
            {
                hint = f.leader_id;
            }
            _ => {
                hint = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    None
}

/// Publishes numbered messages, one to three per entry, each sent again with the same
/// pairs until confirmed.
async fn producer(name: String, net: Net, rng: SimRng, stop: Arc<AtomicBool>, out: Confirmed) {
    let start = tokio::time::Instant::now();
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let count = rng.u64(1..4);
        let at_ms = start.elapsed().as_millis() as u64 + 1_000;
        let entry = Entry {
            commands: (next..next + count)
                .map(|seq| publish(&name, seq, at_ms))
                .collect(),
        };
        let Some((id, answers)) = write(&net, &rng, &entry, Some(&stop)).await else {
            return;
        };
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        for (seq, answer) in (next..next + count).zip(&answers.0) {
            assert!(answer.is_ok(), "a publish refused: {answer:?}");
            out.push(((name.clone(), seq), id));
        }
        next += count;
    }
}

/// One run of the simulation from `seed`.
pub(super) fn run(seed: u64) -> Result<Summary, String> {
    runtime::seed(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(simulate(seed))
}

async fn simulate(seed: u64) -> Result<Summary, String> {
    let rng = SimRng(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))));
    let n = if seed % 4 == 3 { 5 } else { 3 };
    let mut sim = Sim {
        rng: rng.clone(),
        net: Net::default(),
        checker: Checker::new(),
        config: sim_config(),
        nodes: (1..=n)
            .map(|id| Node {
                id,
                disk: Arc::new(Mutex::new(Disk::default())),
                running: None,
            })
            .collect(),
        crashes: 0,
    };
    for i in 0..sim.nodes.len() {
        sim.start(i).await?;
    }
    let declare = Entry {
        commands: vec![Command::Declare { def: def("sim", 0) }],
    };
    tokio::time::timeout(SETTLE, write(&sim.net, &rng, &declare, None))
        .await
        .map_err(|_| format!("no leader took the declare within {SETTLE:?}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Confirmed::default();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|k| {
            tokio::spawn(producer(
                format!("p{k}"),
                sim.net.clone(),
                rng.clone(),
                Arc::clone(&stop),
                Arc::clone(&confirmed),
            ))
        })
        .collect();
    let mut partitions = 0;
    for _ in 0..STEPS {
        let split = !sim.net.lock().side.is_empty();
        sim.step().await?;
        partitions += u32::from(!split && !sim.net.lock().side.is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.map_err(|e| format!("a producer failed: {e}"))?;
    }
    sim.settle().await?;
    verify(&sim, &confirmed.lock().unwrap_or_else(|p| p.into_inner()))?;

    let (raft, _) = sim.nodes[0].running.as_ref().expect("all up");
    let metrics = raft.metrics().borrow().clone();
    let summary = Summary {
        nodes: sim.nodes.len(),
        confirmed: confirmed.lock().unwrap_or_else(|p| p.into_inner()).len(),
        entries: metrics.last_log_index.unwrap_or(0),
        crashes: sim.crashes,
        partitions,
        terms: metrics.current_term as usize,
        trace: sim.checker.lock().trace,
    };
    for i in 0..sim.nodes.len() {
        sim.crash(i).await;
    }
    Ok(summary)
}

/// The end state: every confirmed publish stored exactly once, at the index it was
/// confirmed at, and every node's machine the same.
fn verify(sim: &Sim, confirmed: &[(Pair, LogId<NodeId>)]) -> Result<(), String> {
    let counts = sim.checker.lock().stored_counts();
    for (pair, id) in confirmed {
        if sim.checker.at(id.index) != Some(*id) {
            return Err(format!(
                "{pair:?} was confirmed at {id}, which the cluster does not hold"
            ));
        }
        match counts.get(pair) {
            Some(1) => {}
            n => return Err(format!("{pair:?} was confirmed and is stored {n:?} times")),
        }
    }
    if let Some((pair, n)) = counts.iter().find(|(_, n)| **n > 1) {
        return Err(format!("{pair:?} is stored {n} times"));
    }
    let machines: Vec<_> = sim
        .nodes
        .iter()
        .map(|node| {
            let (_, applied) = node.running.as_ref().expect("all up");
            let applied = applied.lock().unwrap_or_else(|p| p.into_inner());
            (applied.last, applied.machine.clone())
        })
        .collect();
    if let Some((i, _)) = machines
        .iter()
        .enumerate()
        .find(|(_, m)| **m != machines[0])
    {
        return Err(format!(
            "node {} and node 1 hold different machines at {:?} and {:?}",
            i + 1,
            machines[i].0,
            machines[0].0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<u64> {
        std::env::var(name).ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
    }

    #[test]
    fn seeded_runs_keep_every_invariant() {
        let seeds: Vec<u64> = match env("TERN_SIM_SEED") {
            Some(seed) => vec![seed],
            None => (0..env("TERN_SIM_SEEDS").unwrap_or(200)).collect(),
        };
        // Two threads: the seeds are independent runs, each on a runtime of its own.
        let (even, odd): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|s| *s % 2 == 0);
        let failures: Vec<(u64, String)> = std::thread::scope(|scope| {
            let runs = [even, odd].map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .filter_map(|seed| match run(seed) {
                            Ok(summary) => {
                                eprintln!("seed {seed}: {summary:?}");
                                None
                            }
                            Err(e) => Some((seed, e)),
                        })
                        .collect::<Vec<_>>()
                })
            });
            runs.into_iter()
                .flat_map(|r| r.join().expect("a simulation thread"))
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{} of {} seeds failed; replay one with TERN_SIM_SEED=<seed> cargo test -p \
             tern-broker sim:\n{failures:#?}",
            failures.len(),
            seeds.len()
        );
    }

    #[test]
    fn a_seed_replays_the_same_run() {
        let first = run(11).expect("seed 11 passes");
        assert!(first.confirmed > 0 && first.crashes > 0, "{first:?}");
        assert_eq!(run(11).expect("seed 11 passes again"), first);
    }
}
