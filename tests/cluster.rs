//! Three real `ternd` processes forming a cluster on loopback: durable queues
//! replicated with Raft, declared and fed through any node, and no confirmed message
//! lost when the node that runs the queues is killed with SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{eventually, http_get, run_cmd, tern_cmd, ternd_cmd, within, Ternd};
use tern::{Client, ErrorCode, MemberRole, Qos, QueueConfig};

/// The cluster's shared secret, in a file of the test's directory.
const SECRET: &str = "a-secret-of-the-test-cluster-0123456789";

/// How soon publishing must resume after the leader is killed. The goal is 5 s (an
/// election takes 1-2 s); a test cannot assert a time on a machine others load, so this
/// bounds a hang, and the test prints the time it measured.
const FAILOVER: Duration = Duration::from_secs(30);

struct Cluster {
    dir: tempfile::TempDir,
    host: String,
    ports: Vec<u16>,
    /// Each node's metrics endpoint.
    metrics: Vec<u16>,
    nodes: Vec<Option<Ternd>>,
}

/// A loopback address of the cluster's own (all of 127.0.0.0/8 is loopback): its nodes'
/// peer and metrics listeners take fixed ports on it, which no other test's listener or
/// outgoing connection can hold (a port picked free on 127.0.0.1 and bound later could
/// be taken meanwhile).
fn own_host() -> String {
    format!("127.{}.{}.1", fastrand::u8(1..), fastrand::u8(..))
}

impl Cluster {
    async fn start(size: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let mut c = Cluster {
            ports: (0..size).map(|i| 7501 + i as u16).collect(),
            metrics: (0..size).map(|i| 9465 + i as u16).collect(),
            host: own_host(),
            nodes: (0..size).map(|_| None).collect(),
            dir,
        };
        for i in 0..size {
            c.start_node(i).await;
        }
        c
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1))
    }

    /// Starts one more node, which waits to be added (`--cluster-join`); returns its
    /// index.
    async fn start_joining(&mut self) -> usize {
        let i = self.nodes.len();
        self.ports.push(7501 + i as u16);
        self.metrics.push(9465 + i as u16);
        self.nodes.push(None);
        self.start_node_with(i, &["--cluster-join", "true"]).await;
        i
    }

    async fn start_node(&mut self, i: usize) {
        self.start_node_with(i, &[]).await;
    }

    async fn start_node_with(&mut self, i: usize, extra: &[&str]) {
        let secret = self.dir.path().join("secret");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.data(i).to_str().unwrap().into(),
            "--metrics-listen".into(),
            format!("{}:{}", self.host, self.metrics[i]),
            "--node-id".into(),
            (i + 1).to_string(),
            "--cluster-listen".into(),
            format!("{}:{}", self.host, self.ports[i]),
            "--cluster-secret-file".into(),
            secret.to_str().unwrap().into(),
        ];
        for (j, port) in self.ports.iter().enumerate() {
            args.push("--peer".into());
            args.push(format!("{}@{}:{port}", j + 1, self.host));
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Ternd::spawn(ternd_cmd(&args)).await;
        self.nodes[i] = Some(node);
    }

    async fn client(&self, i: usize) -> Client {
        let node = self.nodes[i].as_ref().expect("node is running");
        within("connect", Client::connect(node.url()))
            .await
            .unwrap()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// The node that leads, and so runs the queues, by its metrics. (A client cannot
    /// tell: it follows the leader wherever it connects.)
    async fn leader(&self) -> usize {
        eventually("a node to lead", || async {
            for i in self.running() {
                if self
                    .metrics(i)
                    .await
                    .contains("\ntern_raft_is_leader{group=\"1\"} 1\n")
                {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    /// The group of queue `queue`, once node `i` knows its leader, as node `i` sees it:
    /// where a member, its Raft's voters.
    async fn group_of(&self, i: usize, queue: &str) -> tern::GroupInfo {
        let client = self.client(i).await;
        eventually("the queue's group to have a leader", || async {
            let groups = client.cluster_groups().await.ok()?;
            groups
                .into_iter()
                .find(|g| g.queues.iter().any(|q| &**q == queue) && g.leader != 0)
        })
        .await
    }

    /// Group `group` as node `member` sees it now (`None`: the node is down, cannot
    /// be asked, or knows no such group).
    async fn view(&self, member: u64, group: u64) -> Option<tern::GroupInfo> {
        let node = self.nodes.get((member - 1) as usize)?.as_ref()?;
        let client = Client::connect(node.url()).await.ok()?;
        let groups = client.cluster_groups().await.ok()?;
        groups.into_iter().find(|g| g.group == group)
    }

    /// A client with every running node as its seed list, `first` at its head.
    async fn seeded(&self, first: usize) -> Client {
        let mut seeds = vec![self.nodes[first].as_ref().expect("running").url()];
        seeds.extend(
            self.running()
                .into_iter()
                .filter(|i| *i != first)
                .map(|i| self.nodes[i].as_ref().expect("running").url()),
        );
        let ordered = Client::builder().shuffle_servers(false);
        within("connect", ordered.connect(seeds.join(",")))
            .await
            .unwrap()
    }

    /// Every running node's client address, as a seed list (`a,b,c`).
    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(Ternd::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s metrics, as Prometheus scrapes them.
    async fn metrics(&self, i: usize) -> String {
        let addr = format!("{}:{}", self.host, self.metrics[i])
            .parse()
            .unwrap();
        let (status, body) = http_get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        body
    }

    /// The value of node `i`'s metric `name` (a gauge or counter, with its labels as
    /// rendered: `tern_raft_term{group="1"}`).
    async fn gauge(&self, i: usize, name: &str) -> u64 {
        let text = self.metrics(i).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in node {}'s metrics", i + 1))
    }

    async fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node is running");
        node.kill9().await;
    }
}

/// Declares queue `name`, bound to `pattern`, through `c`.
async fn declare(c: &Client, name: &str, pattern: &str) {
    within(
        "declare",
        c.declare_queue(&QueueConfig::new(name).bind(pattern)),
    )
    .await
    .unwrap();
}

/// Publishes `payload` at QoS 1 through `c` until it is confirmed: a client connected
/// to one node only, when that node cannot reach a leader, is refused (`not_leader`)
/// and retries.
async fn publish_confirmed(c: &Client, subject: &str, payload: String, deadline: Instant) {
    loop {
        let sent = c
            .publish(subject, payload.clone())
            .qos(Qos::AtLeastOnce)
            .send()
            .await
            .unwrap();
        match within("a confirm", sent).await {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "'{payload}' still refused after the failover deadline: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Takes what is in `queue` from node `i`, acking each, until `expected` came or none
/// comes for 10 s; returns the payloads (the caller compares them with what it sent).
async fn drain(cluster: &Cluster, i: usize, queue: &str, expected: usize) -> Vec<String> {
    let c = cluster.client(i).await;
    let mut consumer = c.consume(queue).prefetch(64).await.unwrap();
    let mut got = Vec::new();
    while got.len() < expected {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await else {
            break;
        };
        let d = d.expect("the consumer is open");
        got.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        within("ack", d.ack()).await.expect("ack");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_message_is_lost_when_the_leader_is_killed() {
    let mut cluster = Cluster::start(3).await;

    // Declared through whichever node: a follower forwards it to the leader.
    let admin = cluster.client(0).await;
    declare(&admin, "orders", "orders.>").await;
    let leader = cluster.leader().await;

    // Confirmed publishes through every node.
    let mut sent = Vec::new();
    let clients: Vec<Client> =
        futures_util::future::join_all(cluster.running().into_iter().map(|i| cluster.client(i)))
            .await;
    let forever = Instant::now() + Duration::from_secs(60);
    for n in 0..60 {
        let payload = format!("before-{n}");
        publish_confirmed(
            &clients[n % clients.len()],
            "orders.new",
            payload.clone(),
            forever,
        )
        .await;
        sent.push(payload);
    }
    drop(clients);

    // Raft's state, for Prometheus: every family described, the leader's view.
    let text = cluster.metrics(leader).await;
    for family in [
        "tern_raft_node_id",
        "tern_raft_term",
        "tern_raft_leader_id",
        "tern_raft_is_leader",
        "tern_raft_electable",
        "tern_raft_last_log_index",
        "tern_raft_last_applied_index",
        "tern_raft_leader_changes_total",
        "tern_raft_replication_lag_entries",
        "tern_raft_commit_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
    }
    assert!(
        text.contains("\ntern_raft_is_leader{group=\"1\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\ntern_raft_leader_id{{group=\"1\"}} {}\n",
            leader + 1
        )),
        "{text}"
    );
    assert!(
        text.contains("tern_raft_replication_lag_entries{group=\"1\",peer="),
        "the leader reports each peer's lag"
    );
    // And each queue group it is a member of, by its number.
    let queue_group = cluster.group_of(leader, "orders").await.group;
    assert!(
        text.contains(&format!("\ntern_raft_term{{group=\"{queue_group}\"}} ")),
        "{text}"
    );

    // The node that runs the queues dies mid-flight; the other two elect one and go on.
    cluster.kill(leader).await;
    let killed_at = Instant::now();
    let survivors = cluster.running();
    let clients: Vec<Client> =
        futures_util::future::join_all(survivors.iter().map(|i| cluster.client(*i))).await;
    for n in 0..40 {
        if n == 1 {
            eprintln!(
                "publishing resumed {:?} after the kill",
                killed_at.elapsed()
            );
        }
        let payload = format!("after-{n}");
        publish_confirmed(
            &clients[n % clients.len()],
            "orders.new",
            payload.clone(),
            killed_at + FAILOVER,
        )
        .await;
        sent.push(payload);
    }

    // Everything confirmed is there, once, on the new leader.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let got = drain(&cluster, new_leader, "orders", sent.len()).await;
    let got_set: BTreeSet<_> = got.iter().cloned().collect();
    let sent_set: BTreeSet<_> = sent.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "no message delivered twice");
    assert_eq!(got_set, sent_set, "lost = 0, unexpected = 0");

    // The killed node comes back and catches up: with the acks replicated, the queue
    // it would serve is empty.
    cluster.start_node(leader).await;
    let again = cluster.leader().await;
    cluster.kill(again).await;
    let last = cluster.leader().await;
    let c = cluster.client(last).await;
    let info = within("queue info", c.queue_info("orders")).await.unwrap();
    assert_eq!(
        info.stats.ready + info.stats.unacked,
        0,
        "acked messages stay acked on every replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_the_purged_log_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(3).await;
    let admin = cluster.client(0).await;
    declare(&admin, "backlog", "backlog").await;
    drop(admin);
    // The queue's entries are its group's: that group's leader is the one to follow.
    let leader = (cluster.group_of(0, "backlog").await.leader - 1) as usize;
    let (behind, other) = match leader {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };

    // One node is down while more entries are committed than the log keeps after a
    // snapshot (1,024 since the last, 256 kept): it can only catch up from a snapshot.
    cluster.kill(behind).await;
    let c = cluster.client(leader).await;
    let forever = Instant::now() + Duration::from_secs(120);
    let mut sent = Vec::new();
    for n in 0..1400 {
        let payload = format!("m{n}");
        publish_confirmed(&c, "backlog", payload.clone(), forever).await;
        sent.push(payload);
    }
    cluster.start_node(behind).await;

    // With the third node down, nothing commits unless the restarted one caught up.
    cluster.kill(other).await;
    publish_confirmed(&c, "backlog", "last".into(), forever).await;
    sent.push("last".into());
    drop(c);
    let restarted = cluster.nodes[behind].as_mut().expect("running");
    let mut installed = false;
    while let Ok(line) = restarted.lines.try_recv() {
        installed |= line.contains("installed a snapshot");
    }
    assert!(installed, "the restarted node caught up through a snapshot");

    // The caught-up node is now the only one whose log is complete: it must lead, and
    // serve everything from what the snapshot and the log after it gave it.
    cluster.kill(leader).await;
    cluster.start_node(other).await;
    let new_leader = eventually("a live leader of the queue's group", || async {
        let led = (cluster.group_of(behind, "backlog").await.leader - 1) as usize;
        (led != leader).then_some(led)
    })
    .await;
    assert_eq!(
        new_leader, behind,
        "only the caught-up node has the queue group's whole log"
    );
    let got = drain(&cluster, new_leader, "backlog", sent.len()).await;
    let got_set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "no message delivered twice");
    assert_eq!(got_set, sent.iter().cloned().collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_a_seed_list_and_follows_the_leader() {
    let cluster = Cluster::start(3).await;
    // A dead address first: the CLI goes on to the next.
    // Nothing listens on port 7599 of the cluster's own address.
    let seeds = format!("{}:7599,{}", cluster.host, cluster.seeds());
    let tern = |args: &[&str]| tern_cmd(Some(&seeds), args);
    let (status, _, err) = run_cmd(
        &mut tern(&["queue", "create", "jobs", "--bind", "jobs"]),
        None,
    )
    .await;
    assert!(status.success(), "{err}");
    for n in 0..3 {
        let (status, _, err) = run_cmd(
            &mut tern(&["pub", "jobs", &format!("job-{n}"), "--qos", "1"]),
            None,
        )
        .await;
        assert!(status.success(), "{err}");
    }
    // Consuming works from every node: a follower names the leader, and the CLI goes
    // there.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let only_follower = cluster.nodes[follower].as_ref().unwrap().url();
    let (status, out, err) = run_cmd(
        &mut tern_cmd(Some(&only_follower), &["consume", "jobs", "--count", "3"]),
        None,
    )
    .await;
    assert!(status.success(), "{err}");
    for n in 0..3 {
        assert!(out.contains(&format!("job-{n}")), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_list_client_publishes_exactly_once_and_consumes_across_leader_kills() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let admin = cluster.seeded(follower).await;
    declare(&admin, "pay", "pay.>").await;

    // The same (producer, sequence) through two nodes: the second node's own window
    // never saw it, and the replicated state machine still stores it once.
    for (i, duplicate) in [(leader, false), (follower, true)] {
        let c = cluster.client(i).await;
        let sent = c
            .publish("pay.once", "once")
            .idempotent("twice-sent", 1)
            .send()
            .await
            .unwrap();
        let confirm = within("confirm", sent).await.unwrap();
        assert_eq!(confirm.duplicate, duplicate, "through node {}", i + 1);
    }

    // A producer on the leader keeps hundreds of QoS 2 publishes in flight while the
    // leader is killed: the client moves to another node and sends the unconfirmed ones
    // again, with their sequence numbers; every one is confirmed, none stored twice.
    let producer = cluster.seeded(leader).await;
    let mut sent = vec!["once".to_string()];
    let mut pending = Vec::new();
    for n in 0..600u64 {
        if n == 300 {
            cluster.kill(leader).await;
        }
        let payload = format!("p-{n}");
        let confirm = producer
            .publish("pay.new", payload.clone())
            .idempotent("producer", n)
            .send()
            .await
            .unwrap();
        pending.push(confirm);
        sent.push(payload);
    }
    let killed_at = Instant::now();
    let mut duplicates = 0;
    for (n, confirm) in pending.into_iter().enumerate() {
        let got = within("a confirm after the failover", confirm).await;
        duplicates += usize::from(got.as_ref().is_ok_and(|c| c.duplicate));
        assert!(got.is_ok(), "publish {n}: {got:?}");
    }
    eprintln!(
        "every publish confirmed {:?} after the kill ({duplicates} sent again were duplicates)",
        killed_at.elapsed()
    );
    drop(producer);
    cluster.start_node(leader).await;

    // A consumer that connects to a follower is taken to the leader; when that leader
    // is killed too, the consumer goes on from the next one.
    let second = cluster.leader().await;
    let consumer_client = cluster.seeded((second + 1) % 3).await;
    let mut consumer = within("consume", async {
        consumer_client.consume("pay").prefetch(16).await
    })
    .await
    .unwrap();
    let mut got = 0;
    let mut killed = false;
    let expected: BTreeSet<String> = sent.iter().cloned().collect();
    let mut seen = BTreeSet::new();
    let mut acked: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    let mut acked_again = 0;
    while seen.len() < expected.len() {
        if !killed && seen.len() >= expected.len() / 2 {
            cluster.kill(second).await;
            killed = true;
        }
        let d = within("a delivery", consumer.next()).await.expect("open");
        let payload = String::from_utf8(d.message.payload.to_vec()).unwrap();
        // An at-least-once ACK is answered when the queue takes it and replicated with
        // the next commit: one the killed leader took just before it died may come
        // back. One the new leader took must not.
        if let Some(after_kill) = acked.get(&payload) {
            assert!(
                !*after_kill,
                "'{payload}' came back after the new leader confirmed its ack"
            );
            acked_again += 1;
        }
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), d.ack()).await {
            acked.insert(payload.clone(), killed);
        }
        seen.insert(payload);
        got += 1;
    }
    assert_eq!(seen, expected, "lost = 0, unexpected = 0");
    eprintln!(
        "{got} delivered, {} again after the kill ({acked_again} acked just before it)",
        got - seen.len()
    );
}

/// A client given one node learns the others from it (CLUSTER_QUERY on connecting) and,
/// when that node dies, reconnects to another and goes on publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_node_learns_the_others_and_survives_its_death() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let c = cluster.client(follower).await;
    let others: BTreeSet<String> = cluster
        .running()
        .into_iter()
        .filter(|i| *i != follower)
        .map(|i| cluster.nodes[i].as_ref().expect("running").url())
        .collect();
    eventually("the client to learn the other nodes", || async {
        let known: BTreeSet<String> = c.servers().into_iter().collect();
        known.is_superset(&others).then_some(())
    })
    .await;
    declare(&c, "learned", "learned").await;
    cluster.kill(follower).await;
    let deadline = Instant::now() + FAILOVER;
    publish_confirmed(&c, "learned", "after its node died".into(), deadline).await;
    let got = drain(&cluster, leader, "learned", 1).await;
    assert_eq!(got, ["after its node died"]);
}

/// A follower that was down a while and restarts does not unseat the leader: it
/// campaigns 1.5 s after its start at the earliest (openraft), with a higher term that
/// would make the leader step down once they talk, so the leader must reach it first —
/// its link redials a dead peer at most ~310 ms apart, however long it was down. Its
/// `tern_raft_electable` says whether it could take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_does_not_unseat_the_leader() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let term = cluster.gauge(leader, r#"tern_raft_term{group="1"}"#).await;
    let c = cluster.seeded(leader).await;
    declare(&c, "steady", "steady").await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower).await;
    // What it misses, to catch up on.
    let deadline = Instant::now() + FAILOVER;
    for n in 0..50 {
        publish_confirmed(&c, "steady", format!("m-{n}"), deadline).await;
    }
    let applied = cluster
        .gauge(leader, r#"tern_raft_last_applied_index{group="1"}"#)
        .await;
    // Down long enough for redials to back off as far as they go.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.start_node(follower).await;
    let restarted = Instant::now();
    eventually("the restarted follower to catch up", || async {
        let now = cluster
            .gauge(follower, r#"tern_raft_last_applied_index{group="1"}"#)
            .await;
        (now >= applied).then_some(())
    })
    .await;
    // That nothing happens takes a while to see: its quiet, then a whole election
    // timeout after it (lease and timeout, at most 2 s).
    tokio::time::sleep_until((restarted + Duration::from_secs(5)).into()).await;
    assert_eq!(cluster.leader().await, leader, "the leader changed");
    assert_eq!(
        cluster.gauge(leader, r#"tern_raft_term{group="1"}"#).await,
        term,
        "a new term began"
    );

    // Caught up, it could take over; left alone, it knows it could not win.
    eventually("the restarted follower to be electable", || async {
        (cluster
            .gauge(follower, r#"tern_raft_electable{group="1"}"#)
            .await
            == 1)
            .then_some(())
    })
    .await;
    let other = 3 - leader - follower;
    cluster.kill(leader).await;
    cluster.kill(other).await;
    eventually("a node left alone to stop campaigning", || async {
        (cluster
            .gauge(follower, r#"tern_raft_electable{group="1"}"#)
            .await
            == 0)
            .then_some(())
    })
    .await;
}

/// An exactly-once consumer (a durable name) keeps its promise across a leader kill: the
/// RECEIVED records and acks are replicated, so what the application was handed before
/// the kill — acked, or still held when the leader died — is not handed to it again by
/// the next leader, and everything is settled in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_consumer_hands_out_each_message_once_across_a_leader_kill() {
    const MESSAGES: usize = 300;
    /// Deliveries handed out and not acked when the leader is killed.
    const HELD: usize = 10;
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let publisher = cluster.seeded(leader).await;
    declare(&publisher, "eo", "eo.>").await;
    let deadline = Instant::now() + FAILOVER;
    for n in 0..MESSAGES {
        publish_confirmed(&publisher, "eo.job", format!("job-{n}"), deadline).await;
    }
    drop(publisher);

    let follower = (leader + 1) % 3;
    let client = cluster.seeded(follower).await;
    let mut consumer = within("consume", async {
        client
            .consume("eo")
            .exactly_once("worker")
            .prefetch(16)
            .await
    })
    .await
    .unwrap();
    let mut handed = BTreeSet::new();
    let mut held = Vec::new();
    let mut killed = false;
    while handed.len() < MESSAGES {
        let d = within("a delivery", consumer.next()).await.expect("open");
        let payload = String::from_utf8(d.message.payload.to_vec()).unwrap();
        assert!(
            handed.insert(payload.clone()),
            "'{payload}' handed out twice"
        );
        if handed.len() <= MESSAGES / 2 {
            // Answered once the ack is committed.
            within("ack", d.ack()).await.unwrap();
        } else if killed {
            // Refused while the next leader is elected, the message comes back flagged
            // received, and the client completes it without handing it out.
            let _ = tokio::time::timeout(Duration::from_secs(5), d.ack()).await;
        } else {
            held.push(d);
            if held.len() == HELD {
                cluster.kill(leader).await;
                killed = true;
                for h in held.drain(..) {
                    let _ = tokio::time::timeout(Duration::from_secs(5), h.ack()).await;
                }
            }
        }
    }
    let expected: BTreeSet<String> = (0..MESSAGES).map(|n| format!("job-{n}")).collect();
    assert_eq!(handed, expected);

    // Whatever comes now was handed out already: the queue must empty with nothing more
    // handed to the application.
    let admin = cluster.seeded(cluster.leader().await).await;
    let settled = eventually("every message settled", || async {
        let info = within("queue info", admin.queue_info("eo")).await.ok()?;
        (info.stats.ready == 0 && info.stats.unacked == 0).then_some(())
    });
    tokio::select! {
        () = settled => {}
        d = consumer.next() => {
            let d = d.expect("open");
            panic!("handed out again: {:?}", d.message.payload);
        }
    }
}

/// Receives the next message on `sub` whose subject is `subject` (skipping probes).
async fn next_on(sub: &mut tern::Subscription, subject: &str) -> tern::Message {
    loop {
        let m = within("a message", sub.next()).await.expect("open");
        if m.subject == subject {
            return m;
        }
    }
}

/// Publishes probes on `subject` through `from` until `sub` receives one: the node
/// `from` is connected to has heard of the subscription.
async fn until_routed(from: &Client, subject: &str, sub: &mut tern::Subscription) {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        from.publish(subject, "probe").await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            return;
        }
        assert!(Instant::now() < deadline, "'{subject}' never routed across");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_request_reply_and_queue_groups_span_the_nodes() {
    let cluster = Cluster::start(3).await;
    let (one, two, three) = (
        cluster.client(0).await,
        cluster.client(1).await,
        cluster.client(2).await,
    );

    // A subscriber on node 1 receives what node 2 publishes, all of it, in order.
    let mut sensors = within("subscribe", async { one.subscribe("sensors.>").await })
        .await
        .unwrap();
    until_routed(&two, "sensors.probe", &mut sensors).await;
    for n in 0..1000 {
        two.publish("sensors.data", n.to_string()).await.unwrap();
    }
    within("flush", two.flush()).await.unwrap();
    for n in 0..1000 {
        let m = next_on(&mut sensors, "sensors.data").await;
        assert_eq!(
            m.payload,
            n.to_string().as_bytes(),
            "in the order published"
        );
    }

    // A request on node 1 reaches a responder on node 3, and its reply comes back.
    let _echo = three
        .serve("svc.echo")
        .run(|req: tern::ServiceRequest| async move {
            Ok::<_, std::convert::Infallible>(req.message.payload)
        })
        .await
        .unwrap();
    eventually("node 1 to know the responder on node 3", || async {
        one.request("svc.echo", "ping").await.ok()
    })
    .await;
    for n in 0..50 {
        let reply = within("a reply", async {
            one.request("svc.echo", n.to_string()).await
        })
        .await
        .unwrap();
        assert_eq!(reply.payload, n.to_string().as_bytes());
    }

    // A queue group with members on nodes 1 and 3, fed from node 2 (which has none):
    // each message reaches exactly one member.
    let mut workers = Vec::new();
    for c in [&one, &three] {
        let mut w = within("subscribe", async {
            c.subscribe("jobs.*").group("workers").await
        })
        .await
        .unwrap();
        until_routed(&two, "jobs.probe", &mut w).await;
        workers.push(w);
    }
    for n in 0..400 {
        two.publish("jobs.run", n.to_string()).await.unwrap();
    }
    within("flush", two.flush()).await.unwrap();
    let mut got = Vec::new();
    let mut per_member = [0usize; 2];
    let [w1, w3] = &mut workers[..] else {
        unreachable!()
    };
    while got.len() < 400 {
        let (m, i) = tokio::select! {
            m = next_on(w1, "jobs.run") => (m, 0),
            m = next_on(w3, "jobs.run") => (m, 1),
        };
        per_member[i] += 1;
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    let unique: BTreeSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 400, "each job once");
    assert!(
        per_member.iter().all(|n| *n > 0),
        "both nodes' members served: {per_member:?}"
    );

    // Once node 1's subscriber is gone, node 2 stops routing there: a mandatory
    // publish finds no taker.
    within("unsubscribe", sensors.unsubscribe()).await.unwrap();
    eventually("node 2 to forget the subscriber on node 1", || async {
        match two.publish("sensors.data", "x").mandatory().await {
            Err(e) if e.code() == Some(tern::ErrorCode::NoRoute) => Some(()),
            _ => None,
        }
    })
    .await;
    let text = cluster.metrics(1).await;
    assert!(
        text.contains("tern_cluster_forwarded_total{peer=\"1\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_and_removed_and_a_dead_one_is_replaced() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.seeded(0).await;
    declare(&client, "ledger", "ledger").await;
    let forever = Instant::now() + Duration::from_secs(120);
    let mut sent = Vec::new();
    for n in 0..20 {
        let payload = format!("a-{n}");
        publish_confirmed(&client, "ledger", payload.clone(), forever).await;
        sent.push(payload);
    }

    // A fourth node joins: it catches up, then votes.
    let four = cluster.start_joining().await;
    let four_addr = format!("{}:{}", cluster.host, cluster.ports[four]);
    within("add node 4", client.add_node(4, &four_addr))
        .await
        .unwrap();
    within("add node 4 again", client.add_node(4, &four_addr))
        .await
        .expect("adding a member again is harmless");
    let elsewhere = within("node 4 elsewhere", client.add_node(4, "127.0.0.1:1")).await;
    assert_eq!(
        elsewhere.unwrap_err().code(),
        Some(ErrorCode::MembershipRefused),
        "a member at another address"
    );
    let info = within("cluster info", client.cluster_info()).await.unwrap();
    let voters: Vec<u64> = info
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Voter)
        .map(|m| m.node_id)
        .collect();
    assert_eq!(voters, [1, 2, 3, 4], "{info:?}");

    // The node that leads dies; the three left (node 4 among them) go on, and node 4
    // holds everything.
    let leader = cluster.leader().await;
    assert_ne!(leader, four, "a new node does not lead at once");
    cluster.kill(leader).await;
    for n in 0..20 {
        let payload = format!("b-{n}");
        publish_confirmed(&client, "ledger", payload.clone(), forever).await;
        sent.push(payload);
    }

    // The dead node is removed for good and replaced by a fifth, with a new data
    // directory; `tern cluster` does it as the README says.
    let dead = (leader + 1) as u64;
    let seeds = cluster.seeds();
    let tern = |args: &[&str]| tern_cmd(Some(&seeds), args);
    let (status, out, err) = run_cmd(
        &mut tern(&["cluster", "remove-node", &dead.to_string()]),
        None,
    )
    .await;
    assert!(status.success(), "{out}{err}");
    let five = cluster.start_joining().await;
    let five_addr = format!("{}:{}", cluster.host, cluster.ports[five]);
    let (status, out, err) =
        run_cmd(&mut tern(&["cluster", "add-node", "5", &five_addr]), None).await;
    assert!(status.success(), "{out}{err}");
    let (status, out, err) = run_cmd(&mut tern(&["cluster", "status", "--json"]), None).await;
    assert!(status.success(), "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mut members: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    members.sort_unstable();
    let expected: Vec<u64> = (1..=5).filter(|n| *n != dead).collect();
    assert_eq!(members, expected, "{status}");
    let (status, out, err) = run_cmd(&mut tern(&["server", "info"]), None).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("cluster       node "), "{out}");

    // The queue's group replaces the dead node too (with the newcomer in fewest
    // groups, node 4): once its voters are live nodes only, any one more node may die.
    // Kill one that held the queue from the start, and everything confirmed is still
    // there, once.
    let holder = cluster
        .running()
        .into_iter()
        .find(|i| *i != four && *i != five)
        .expect("an original node runs");
    // Done once every member has it, not only the leader that appended it: until the
    // change reaches them, the others are in the joint configuration, whose old half
    // (with the dead node) has no majority once one more node dies.
    let group = eventually("the queue's group to replace the dead node", || async {
        let g = cluster.group_of(holder, "ledger").await;
        if g.members.contains(&dead) || g.members.len() != 3 {
            return None;
        }
        for member in &g.members {
            if cluster.view(*member, g.group).await?.members != g.members {
                return None;
            }
        }
        Some(g)
    })
    .await;
    assert!(group.members.contains(&((four + 1) as u64)), "{group:?}");
    cluster.kill(holder).await;
    // Drained from the node the queue's group elects once its leader died (if it was
    // the one killed), as its live members name it: a node outside the group knows
    // its leader only as last heard of.
    let queue_leader = eventually("a live leader of the queue's group", || async {
        for member in &group.members {
            if (member - 1) as usize == holder {
                continue;
            }
            let g = cluster.view(*member, group.group).await?;
            let led = g.leader.checked_sub(1)? as usize;
            if led != holder && g.members.contains(member) {
                return Some(led);
            }
        }
        None
    })
    .await;
    let got = drain(&cluster, queue_leader, "ledger", sent.len()).await;
    let got_set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "no message delivered twice");
    assert_eq!(got_set, sent.iter().cloned().collect::<BTreeSet<_>>());
}

/// Queues go to groups of their own, led by different nodes; a publish into queues of
/// two groups is stored by both, and messages move between queues of two groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_spread_over_groups_and_messages_cross_them() {
    let cluster = Cluster::start(3).await;
    let client = cluster.seeded(1).await;
    declare(&client, "left", "both.>").await;
    declare(&client, "right", "both.>").await;
    let (left, right) = (
        cluster.group_of(0, "left").await,
        cluster.group_of(0, "right").await,
    );
    assert_ne!(left.group, right.group, "{left:?} {right:?}");
    assert_ne!(left.leader, right.leader, "the first leaders are spread");
    assert_eq!(left.members, [1, 2, 3]);

    let forever = Instant::now() + Duration::from_secs(60);
    let mut sent = Vec::new();
    for n in 0..10 {
        let payload = format!("m-{n}");
        let confirmed = within(
            "a confirm",
            client
                .publish("both.x", payload.clone())
                .qos(Qos::AtLeastOnce)
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(confirmed.queues, 2, "both groups stored '{payload}'");
        sent.push(payload);
    }
    assert!(Instant::now() < forever);

    let moved = within("move", client.move_messages("left", "right", None))
        .await
        .unwrap();
    assert_eq!(moved, 10);
    let got = drain(&cluster, 0, "right", 20).await;
    let mut want: Vec<String> = sent.iter().chain(&sent).cloned().collect();
    let mut got_sorted = got.clone();
    want.sort();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "its own ten and the ten moved");
    let info = within("queue info", client.queue_info("left"))
        .await
        .unwrap();
    assert_eq!(
        info.stats.ready + info.stats.unacked,
        0,
        "moved out of left"
    );
}

/// A queue declared with fewer replicas than nodes lives on that many; a node without a
/// replica still takes its publishes and sends its consumers where it is. More
/// replicas than nodes are refused, as any replica count beyond 1 by a server alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_lives_on_as_many_nodes_as_it_asks_replicas() {
    let cluster = Cluster::start(3).await;
    let client = cluster.seeded(0).await;
    for (name, replicas) in [("solo", 1), ("pair", 2)] {
        within(
            "declare",
            client.declare_queue(&QueueConfig::new(name).bind(name).replicas(replicas)),
        )
        .await
        .unwrap();
        let group = cluster.group_of(0, name).await;
        assert_eq!(group.members.len(), usize::from(replicas), "{group:?}");
    }
    let too_many = within(
        "declare",
        client.declare_queue(&QueueConfig::new("many").bind("many").replicas(4)),
    )
    .await
    .unwrap_err();
    assert_eq!(too_many.code(), Some(ErrorCode::InvalidQueue), "{too_many}");
    assert!(too_many.to_string().contains("3 nodes"), "{too_many}");

    // Through a node that holds no replica of `solo`: published, and consumed (the
    // consumer is sent to the node that holds it).
    let holder = cluster.group_of(0, "solo").await.members[0];
    let other = (0..3).find(|i| (*i + 1) as u64 != holder).unwrap();
    let elsewhere = cluster.client(other).await;
    let forever = Instant::now() + Duration::from_secs(60);
    for n in 0..5 {
        publish_confirmed(&elsewhere, "solo", format!("s-{n}"), forever).await;
    }
    let got = drain(&cluster, other, "solo", 5).await;
    assert_eq!(got.len(), 5, "{got:?}");

    // Alone, a queue has one replica at most.
    let dir = tempfile::tempdir().unwrap();
    let alone = Ternd::start(dir.path(), &[]).await;
    let c = within("connect", Client::connect(alone.url()))
        .await
        .unwrap();
    let refused = within(
        "declare",
        c.declare_queue(&QueueConfig::new("q").replicas(2)),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("runs alone"), "{refused}");
    within(
        "declare",
        c.declare_queue(&QueueConfig::new("q").replicas(1)),
    )
    .await
    .unwrap();
}
