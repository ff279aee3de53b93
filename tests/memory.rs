#![cfg(target_os = "linux")]
//! Memory stays bounded by the configured budgets, whatever the backlog: a real `ternd`
//! whose peak RSS is read from `/proc` while a consumer that stopped reading sits on a
//! queue that 200 MB are published to.

mod common;

use bytes::Bytes;
use common::{eventually, tern_cmd, Proc, Ternd};
use tern::{Client, Qos, QueueConfig};

const MIB: u64 = 1024 * 1024;

/// ternd's peak resident set, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_does_not_pull_a_200_mb_backlog_into_memory() {
    let data = tempfile::tempdir().unwrap();
    let ternd = Ternd::start(&data.path().join("store"), &[]).await;
    let c = Client::connect(ternd.url()).await.unwrap();
    c.declare_queue(&QueueConfig::new("backlog").bind("backlog"))
        .await
        .unwrap();

    // A real consumer asking for 1,000 deliveries of 100 KB (100 MB) at once, which
    // stops reading: a `tern consume` process, stopped once it is attached.
    let mut consumer = Proc::spawn(
        tern_cmd(
            Some(&ternd.url()),
            &["consume", "backlog", "--prefetch", "1000"],
        )
        .stdout(std::process::Stdio::null()),
    );
    eventually("the consumer to attach", || async {
        let info = c.queue_info("backlog").await.unwrap();
        (info.stats.consumers == 1).then_some(())
    })
    .await;
    signal(consumer.child.id(), rustix::process::Signal::STOP);

    // 200 MB of QoS 1 messages, 64 unconfirmed at a time.
    let payload = Bytes::from(vec![0x5a; 100 * 1024]);
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..2000 {
        if pending.len() == 64 {
            let confirm: tern::PendingConfirm = pending.pop_front().unwrap();
            confirm.await.unwrap();
        }
        let p = c
            .publish("backlog", payload.clone())
            .qos(Qos::AtLeastOnce)
            .send()
            .await
            .unwrap();
        pending.push_back(p);
    }
    for p in pending {
        p.await.unwrap();
    }
    let info = c.queue_info("backlog").await.unwrap();
    assert_eq!(info.stats.ready + info.stats.unacked, 2000, "all stored");

    // What ternd may hold by its configured defaults: the journal's 32 MiB of messages
    // waiting for a commit, 4 MiB of bodies the queue keeps, the stopped consumer's
    // 8 MiB outbound budget (and 64 KiB over it for replies), sled's 16 MiB cache; and
    // 48 MiB for the rest (code, runtime, sled's own tables, read and write buffers).
    // Before bodies left sled and deliveries counted against the outbound budget, this
    // run peaked at 344 MiB.
    let bound = (32 + 4 + 8 + 1 + 16 + 48) * MIB;
    let peak = peak_rss(ternd.pid());
    assert!(
        peak <= bound,
        "ternd peaked at {} MiB, over the {} MiB its budgets allow",
        peak / MIB,
        bound / MIB
    );

    signal(consumer.child.id(), rustix::process::Signal::CONT);
    consumer.child.kill().unwrap();
    consumer.wait().await;
}
