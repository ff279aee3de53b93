//! The journal over a store that fails on demand and that can lose power.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex as StdMutex;

use tern_storage::{
    Commit, LogFile, Recover, RecoveredChunk, SledStore, StorageError, Store, StoredMessage, Wal,
};

use super::*;
use crate::config::SyncPolicy;
use crate::dedup::Seen;
use crate::filter::FilterLimits;
use crate::queue::machine::tests::{def, envelope};
use crate::queue::machine::Outcome;
use crate::queue::{recovery, QueueHandle, QueueInput};

/// A sled store that fails on demand and remembers which of its commits a flush
/// covered, so that a test can cut the power: [`TestStore::after_power_loss`] builds
/// the store as a disk would hold it, with every write not covered by a sync lost.
#[derive(Debug)]
struct TestStore {
    store: SledStore,
    /// Writes fail, as on a full disk.
    full: AtomicBool,
    /// What the filesystem reports free.
    free: AtomicU64,
    /// Commits applied since the last flush, then those a flush covered.
    unsynced: StdMutex<Vec<Commit>>,
    synced: StdMutex<Vec<Commit>>,
}

impl TestStore {
    fn open(dir: &std::path::Path) -> Self {
        Self {
            store: SledStore::open(dir).unwrap(),
            full: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            unsynced: StdMutex::default(),
            synced: StdMutex::default(),
        }
    }

    /// The store as the disk holds it if the power failed now, in `dir`: what the
    /// last flush covered, and of the commits since then the first `kept` (sled writes
    /// its buffers out on its own, in order, batches whole).
    fn after_power_loss(&self, dir: &std::path::Path, kept: usize) -> SledStore {
        // Both at once, locked in the order flush locks them: a flush in between
        // would otherwise move commits out of one list before the other is read.
        let (synced, unsynced) = {
            let unsynced = self.unsynced.lock().unwrap();
            let synced = self.synced.lock().unwrap();
            (synced.clone(), unsynced.clone())
        };
        let store = SledStore::open(dir).unwrap();
        for commit in synced.iter().chain(unsynced.iter().take(kept)) {
            store.apply(commit).unwrap();
        }
        store.flush().unwrap();
        store
    }
}

impl Store for TestStore {
    fn recover(&self, into: &mut dyn Recover) -> Result<(), StorageError> {
        self.store.recover(into)
    }
    fn apply(&self, commit: &Commit) -> Result<(), StorageError> {
        if self.full.load(Ordering::Relaxed) {
            return Err(StorageError::Refused {
                detail: "no space left on device".into(),
            });
        }
        self.store.apply(commit)?;
        self.unsynced.lock().unwrap().push(commit.clone());
        Ok(())
    }
    fn flush(&self) -> Result<(), StorageError> {
        self.store.flush()?;
        let mut unsynced = self.unsynced.lock().unwrap();
        self.synced.lock().unwrap().append(&mut unsynced);
        Ok(())
    }
    fn read_chunk(&self, queue: QueueId, seq: u64) -> Result<Vec<StoredMessage>, StorageError> {
        self.store.read_chunk(queue, seq)
    }
    fn log_index(&self) -> Result<u64, StorageError> {
        self.store.log_index()
    }
    fn applied(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.store.applied()
    }
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.store.size_on_disk()
    }
    fn free_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.free.load(Ordering::Relaxed))
    }
}

/// The write-ahead log's file in memory, which keeps apart what a sync covered: after
/// a power loss ([`SimFile::after_power_loss`]) only that is left.
#[derive(Debug, Clone, Default)]
struct SimFile(Arc<StdMutex<SimBytes>>);

#[derive(Debug, Default)]
struct SimBytes {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Syncs fail, as on a failing disk.
    sync_fails: bool,
}

impl SimFile {
    fn after_power_loss(&self) -> SimFile {
        let durable = self.0.lock().unwrap().durable.clone();
        SimFile(Arc::new(StdMutex::new(SimBytes {
            current: durable.clone(),
            durable,
            sync_fails: false,
        })))
    }
}

impl LogFile for SimFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut b = self.0.lock().unwrap();
        let start = usize::try_from(offset).unwrap();
        if b.current.len() < start + buf.len() {
            b.current.resize(start + buf.len(), 0);
        }
        b.current[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        let mut b = self.0.lock().unwrap();
        if b.sync_fails {
            return Err(std::io::Error::other("EIO"));
        }
        b.durable = b.current.clone();
        Ok(())
    }
    fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(self.0.lock().unwrap().current.clone())
    }
}

/// A write-ahead log small enough that the tests checkpoint often.
const TEST_WAL_BYTES: u64 = 16 << 10;

/// Opens the log over `store` and `wal` as the server does; returns it with the
/// recovered state.
fn open_log(
    store: Arc<dyn Store>,
    wal: &SimFile,
    dir: &std::path::Path,
    health: &Arc<StoreHealth>,
) -> (StoreLog, recovery::Recovered) {
    let wal = Wal::with_file(Box::new(wal.clone()), TEST_WAL_BYTES).unwrap();
    StoreLog::open(
        store,
        wal,
        dir,
        |s| recovery::recover(s, dir, 1 << 20, Default::default()),
        Arc::clone(health),
        SyncPolicy::Always,
        LogMetrics {
            commits: metrics::Counter::noop(),
            flushes: metrics::Counter::noop(),
            bytes_written: metrics::Counter::noop(),
            flush_duration: metrics::Histogram::noop(),
        },
    )
    .unwrap()
}

/// Answers to publishes, as a session would encode them: (id, queues or error text).
type Answer = (u32, Result<u16, String>);

#[derive(Debug)]
struct Answers(mpsc::UnboundedSender<Answer>);

impl Confirms for Answers {
    fn answer(self: Arc<Self>, id: u32, result: Result<Outcome, Refused>, _: &mut Wakes) {
        let queues = result.map(|o| o.queues).map_err(|e| e.to_string());
        let _ = self.0.send((id, queues));
    }
}

const MIN_FREE: u64 = 1 << 20;

/// A journal with one queue over a [`TestStore`], with the queue task's inbox and the
/// publishers' answers.
struct Rig {
    store: Arc<TestStore>,
    wal: SimFile,
    health: Arc<StoreHealth>,
    dedup: Arc<Mutex<DedupWindow>>,
    journal: Journal,
    confirms: Arc<Answers>,
    answers: mpsc::UnboundedReceiver<Answer>,
    appended: mpsc::Receiver<QueueInput>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Self {
        Rig::with_log(|log| log).await
    }

    /// A rig whose journal writes to `wrap` of the store's log.
    async fn with_log<L: Log>(wrap: impl FnOnce(StoreLog) -> L) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TestStore::open(dir.path()));
        let health = Arc::new(StoreHealth::new(
            MIN_FREE,
            metrics::Gauge::noop(),
            metrics::Counter::noop(),
        ));
        let dedup = Arc::new(Mutex::new(DedupWindow::new(1000, 60_000)));
        let wal = SimFile::default();
        let (log, _) = open_log(
            Arc::clone(&store) as Arc<dyn Store>,
            &wal,
            dir.path(),
            &health,
        );
        let runtime = Arc::new(QueueRuntime::new(
            Arc::default(),
            Arc::clone(&store) as Arc<dyn Store>,
            1 << 20,
            FilterLimits::default(),
            metrics::Histogram::noop(),
            false,
        ));
        let writer = Writer::new(
            wrap(log),
            Arc::clone(&health),
            Arc::clone(&dedup),
            metrics::Histogram::noop(),
            Arc::clone(&runtime),
        );
        let (journal, _thread) = writer.spawn().unwrap();
        let (done, declared) = oneshot::channel();
        journal.send(Op::PutQueue {
            replicas: 0,
            def: def("q", 0),
            done: Box::new(move |r| {
                let _ = done.send(r);
            }),
        });
        declared.await.unwrap().unwrap();
        // The test plays the queue's task: what the runtime hands it arrives here.
        let (tasks, appended) = mpsc::channel(4096);
        let queue = runtime.queues.get("q").unwrap();
        assert_eq!(queue.id, 1);
        runtime.queues.insert(Arc::new(QueueHandle {
            id: queue.id,
            group: queue.group,
            replica: true,
            def: Arc::clone(&queue.def),
            filters: Vec::new(),
            tx: tasks,
        }));
        let (tx, answers) = mpsc::unbounded_channel();
        Rig {
            store,
            wal,
            health,
            dedup,
            journal,
            confirms: Arc::new(Answers(tx)),
            answers,
            appended,
            _dir: dir,
        }
    }

    fn op(&self, id: u32, payload: &[u8], dedup: Option<u64>) -> PublishOp {
        PublishOp {
            queues: vec![1],
            route_on_leader: false,
            publisher: 1,
            envelope: Bytes::copy_from_slice(payload),
            enqueued_ms: now_ms(),
            deadline_ms: None,
            dedup: dedup.map(|sequence| DedupEntry {
                producer: "p".into(),
                sequence,
                at_ms: now_ms(),
            }),
            confirm: Some(ConfirmTo {
                to: Arc::clone(&self.confirms) as Arc<dyn Confirms>,
                id,
                received: Instant::now(),
            }),
            held: None,
        }
    }

    /// Publishes (producer "p", `sequence`) with confirm id `id`, recording the pair
    /// in the window first as the session does; returns the answer.
    async fn publish(&mut self, id: u32, sequence: u64) -> Answer {
        assert_eq!(lock(&self.dedup).insert("p", sequence, now_ms()), Seen::New);
        let op = self.op(id, b"message", Some(sequence));
        self.journal.publish(op).await.unwrap();
        self.answers.recv().await.unwrap()
    }

    /// The answer must be an error for `id` containing `why`, with the pair out of
    /// the window so that a retry is stored.
    fn refused(&self, answer: Answer, id: u32, sequence: u64, why: &str) {
        match answer {
            (got, Err(e)) if got == id => assert!(e.contains(why), "{e}"),
            other => panic!("expected a refusal of {id}, got {other:?}"),
        }
        assert_eq!(
            lock(&self.dedup).insert("p", sequence, now_ms()),
            Seen::New,
            "the refused sequence may be sent again"
        );
        lock(&self.dedup).failed("p", sequence);
    }

    /// The answer must be a confirm for `id`, and the queue task must get the message.
    async fn stored(&mut self, answer: Answer, id: u32) {
        assert_eq!(answer, (id, Ok(1)));
        match self.appended.recv().await {
            Some(QueueInput::Appended(msgs)) => assert_eq!(msgs.len(), 1),
            other => panic!("expected the message for the queue, got {other:?}"),
        }
        assert_eq!(self.health.problem(), None);
    }
}

/// The store's log shaped like a replicated one: a cap on an entry's message bytes;
/// what each entry carried, recorded; once the test sets a [`Gate`], the next append
/// held until the test opens it, so that what comes behind it piles up; and with a
/// [`Pipeline`], entries kept on their way.
struct TestLog {
    log: StoreLog,
    max: usize,
    gate: Arc<StdMutex<Option<Gate>>>,
    /// Per entry: its publishes and their envelope bytes.
    entries: Arc<StdMutex<Vec<(usize, usize)>>>,
    pipeline: Option<Pipeline>,
}

impl TestLog {
    fn over(log: StoreLog) -> Self {
        Self {
            log,
            max: usize::MAX,
            gate: Arc::default(),
            entries: Arc::default(),
            pipeline: None,
        }
    }
}

/// Keeps `DEPTH` entries on their way, as a Raft leader does: each is written at
/// once, and answered only when the test hands out a permit of `answer`.
struct Pipeline {
    appended: Arc<AtomicU64>,
    answer: Arc<tokio::sync::Semaphore>,
}

impl Pipeline {
    const DEPTH: usize = 2;
}

/// Holds an append: `held` is notified once it waits, `open` lets it go on, and then it
/// fails with `fail`, if set (as a forward to a leader that was cut off fails).
#[derive(Default)]
struct Gate {
    held: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
    fail: Option<LogError>,
}

impl Log for TestLog {
    async fn append(&mut self, entry: Entry, awaited: bool) -> Appending {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.held.notify_one();
            gate.open.notified().await;
            if let Some(e) = gate.fail {
                return Box::pin(std::future::ready(Err(e)));
            }
        }
        let envelopes: Vec<usize> = entry
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Publish { envelope, .. } => Some(envelope.len()),
                _ => None,
            })
            .collect();
        if !envelopes.is_empty() {
            let carried = (envelopes.len(), envelopes.iter().sum());
            self.entries.lock().unwrap().push(carried);
        }
        let written = self.log.append(entry, awaited).await;
        let Some(pipeline) = &self.pipeline else {
            return written;
        };
        pipeline.appended.fetch_add(1, Ordering::SeqCst);
        let answer = Arc::clone(&pipeline.answer);
        Box::pin(async move {
            answer.acquire().await.unwrap().forget();
            written.await
        })
    }
    fn depth(&self) -> usize {
        self.pipeline.as_ref().map_or(1, |_| Pipeline::DEPTH)
    }
    fn refuses_new_messages(&self) -> Option<String> {
        self.log.refuses_new_messages()
    }
    fn max_entry_bytes(&self) -> usize {
        self.max
    }
    fn sync_due(&self) -> Option<Instant> {
        self.log.sync_due()
    }
    fn sync(&mut self) -> Result<(), LogError> {
        self.log.sync()
    }
    fn compact(&mut self) -> Result<(), LogError> {
        self.log.compact()
    }
}

#[tokio::test]
async fn a_batch_stops_at_the_logs_entry_size() {
    const MAX: usize = 1000;
    const SIZE: usize = 256;
    const COUNT: u32 = 64;
    let (gate, entries): (Arc<StdMutex<_>>, Arc<StdMutex<_>>) = Default::default();
    let mut rig = Rig::with_log(|log| TestLog {
        max: MAX,
        gate: Arc::clone(&gate),
        entries: Arc::clone(&entries),
        ..TestLog::over(log)
    })
    .await;
    let open = Arc::new(tokio::sync::Notify::new());
    *gate.lock().unwrap() = Some(Gate {
        open: Arc::clone(&open),
        ..Gate::default()
    });
    rig.journal
        .publish(rig.op(0, &[0; SIZE], None))
        .await
        .unwrap();
    for id in 1..COUNT {
        rig.journal
            .publish(rig.op(id, &[0; SIZE], None))
            .await
            .unwrap();
    }
    open.notify_one();
    for _ in 0..COUNT {
        let (_, stored) = rig.answers.recv().await.unwrap();
        assert_eq!(stored, Ok(1));
    }
    let entries = entries.lock().unwrap().clone();
    assert_eq!(
        entries.iter().map(|(n, _)| n).sum::<usize>(),
        COUNT as usize
    );
    for (n, bytes) in &entries {
        // A batch closes once it reaches the cap: it may pass it by one message.
        assert!(
            *bytes < MAX + SIZE,
            "{n} publishes of {bytes} bytes in one entry"
        );
    }
    assert!(
        entries.iter().any(|(n, _)| *n > 1),
        "the publishes behind the gate were gathered: {entries:?}"
    );
}

/// With a log that keeps entries on their way, the journal appends the next batch
/// without waiting for the last one's answer — up to the log's depth — and answers
/// the publishes in the order it appended them.
#[tokio::test]
async fn entries_on_their_way_together_are_answered_in_order() {
    // One answer for the rig's queue declaration.
    let (appended, answer) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(tokio::sync::Semaphore::new(1)),
    );
    let mut rig = Rig::with_log(|log| TestLog {
        pipeline: Some(Pipeline {
            appended: Arc::clone(&appended),
            answer: Arc::clone(&answer),
        }),
        ..TestLog::over(log)
    })
    .await;
    let declared = appended.load(Ordering::SeqCst);
    let appended_at_least = |n: u64| {
        let appended = Arc::clone(&appended);
        async move {
            // The journal runs on a thread of its own: polled, within a bound.
            let reached = async {
                while appended.load(Ordering::SeqCst) < declared + n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), reached)
                .await
                .expect("the journal appends");
        }
    };
    for id in 1..=3u32 {
        rig.journal.publish(rig.op(id, b"m", None)).await.unwrap();
        // Each publish is its own batch: the next comes once this one is appended,
        // or (the third) while two are on their way.
        if id < 3 {
            appended_at_least(u64::from(id)).await;
        }
    }
    assert_eq!(
        appended.load(Ordering::SeqCst),
        declared + Pipeline::DEPTH as u64
    );
    assert!(rig.answers.try_recv().is_err(), "nothing answered yet");

    answer.add_permits(1);
    assert_eq!(rig.answers.recv().await.unwrap(), (1, Ok(1)));
    // The first answered, the third goes on its way.
    appended_at_least(3).await;
    answer.add_permits(2);
    assert_eq!(rig.answers.recv().await.unwrap(), (2, Ok(1)));
    assert_eq!(rig.answers.recv().await.unwrap(), (3, Ok(1)));
}

/// A client that resends a QoS 2 publish (after a reconnect, say) while the first copy
/// is still on its way gets the second stored if the first fails — never a "duplicate"
/// confirm for a message no queue took.
#[tokio::test]
async fn a_resend_while_the_first_copy_is_on_its_way_is_stored_if_that_copy_fails() {
    let gate: Arc<StdMutex<_>> = Arc::default();
    let mut rig = Rig::with_log(|log| TestLog {
        gate: Arc::clone(&gate),
        ..TestLog::over(log)
    })
    .await;
    let held = Gate {
        fail: Some(LogError::NoLeader("the leader was cut off".into())),
        ..Gate::default()
    };
    let (waiting, open) = (Arc::clone(&held.held), Arc::clone(&held.open));
    *gate.lock().unwrap() = Some(held);
    assert_eq!(lock(&rig.dedup).insert("p", 1, now_ms()), Seen::New);
    rig.journal.publish(rig.op(1, b"m", Some(1))).await.unwrap();
    waiting.notified().await;

    // The resend, as the session sees it: the pair is in flight, so it goes on too.
    assert_eq!(lock(&rig.dedup).insert("p", 1, now_ms()), Seen::InFlight);
    rig.journal.publish(rig.op(2, b"m", Some(1))).await.unwrap();
    open.notify_one();
    let first = rig.answers.recv().await.unwrap();
    assert!(
        matches!(&first, (1, Err(e)) if e.contains("cut off")),
        "{first:?}"
    );
    let second = rig.answers.recv().await.unwrap();
    rig.stored(second, 2).await;
    assert_eq!(
        lock(&rig.dedup).insert("p", 1, now_ms()),
        Seen::Stored,
        "a third copy is a duplicate"
    );
}

#[tokio::test]
async fn a_failed_write_is_an_error_confirm_and_the_journal_goes_on() {
    let mut rig = Rig::new().await;
    rig.store.full.store(true, Ordering::Relaxed);
    let answer = rig.publish(7, 1).await;
    rig.refused(answer, 7, 1, "no space left");
    let problem = rig.health.problem().expect("unhealthy while writes fail");
    assert!(problem.contains("no space left"), "{problem}");

    // The disk has room again: the retry is stored and confirmed.
    rig.store.full.store(false, Ordering::Relaxed);
    let answer = rig.publish(8, 1).await;
    rig.stored(answer, 8).await;
}

#[tokio::test]
async fn below_min_free_new_messages_are_refused_until_space_returns() {
    let mut rig = Rig::new().await;
    rig.store.free.store(MIN_FREE - 1, Ordering::Relaxed);
    // Writes would fail too: the alarm must refuse before the store is touched.
    rig.store.full.store(true, Ordering::Relaxed);
    let answer = rig.publish(7, 1).await;
    rig.refused(answer, 7, 1, "disk alarm");
    let problem = rig.health.problem().expect("unhealthy under the alarm");
    assert!(problem.contains("store.min_free_bytes"), "{problem}");

    rig.store.free.store(MIN_FREE, Ordering::Relaxed);
    rig.store.full.store(false, Ordering::Relaxed);
    let answer = rig.publish(8, 1).await;
    rig.stored(answer, 8).await;
}

#[tokio::test]
async fn a_failed_sync_is_never_retried_into_a_confirm() {
    let mut rig = Rig::new().await;
    rig.wal.0.lock().unwrap().sync_fails = true;
    let answer = rig.publish(7, 1).await;
    rig.refused(answer, 7, 1, "syncing the store failed");

    // The disk works again, but what the failed sync covered may be lost in a way a
    // later sync cannot show: durable writes stay refused until a restart.
    rig.wal.0.lock().unwrap().sync_fails = false;
    let answer = rig.publish(8, 2).await;
    rig.refused(answer, 8, 2, "until ternd restarts");
    let problem = rig.health.problem().expect("unhealthy for good");
    assert!(problem.contains("until ternd restarts"), "{problem}");
    assert!(
        rig.appended.try_recv().is_err(),
        "nothing reached the queue"
    );
}

/// The live messages of queue 1 in a store.
#[derive(Default)]
struct Live(Vec<StoredMessage>);

impl Recover for Live {
    fn queue(&mut self, _: tern_storage::QueueRecord) {}
    fn next_seq(&mut self, _: QueueId, _: u64) {}
    fn chunk(&mut self, chunk: RecoveredChunk) {
        self.0.extend(chunk.live);
    }
    fn meta(&mut self, _: QueueId, _: u64, _: MessageMeta) {}
    fn dedup(&mut self, _: DedupEntry) {}
    fn log_index(&mut self, _: u64) {}
    fn next_queue_id(&mut self, _: QueueId) {}
}

/// Publishes and acks while the power fails at a random moment, many times over: the
/// store the disk would hold keeps every confirmed message that was not acked, never
/// brings back an ack that was answered, holds nothing that was never published, and
/// recovers cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_at_any_moment_loses_no_confirmed_message() {
    const ROUNDS: usize = 40;
    const MESSAGES: u32 = 300;
    for round in 0..ROUNDS {
        let mut rig = Rig::new().await;
        let crash_after = fastrand::u32(0..MESSAGES);
        // Acks sent to the journal, and those it answered (durable).
        let ack_asked = Arc::new(StdMutex::new(BTreeSet::new()));
        let acked = Arc::new(StdMutex::new(BTreeSet::new()));
        let bodies: Vec<Bytes> = (0..MESSAGES).map(|i| envelope(&format!("m{i}"))).collect();
        let ops: Vec<_> = (0..MESSAGES)
            .map(|i| rig.op(i, &bodies[i as usize], None))
            .collect();
        let journal = rig.journal.clone();
        let publisher = tokio::spawn(async move {
            for op in ops {
                if journal.publish(op).await.is_err() {
                    return;
                }
            }
        });
        // Acks every third message once it reaches the queue, recording the acks the
        // journal answered.
        let mut appended = std::mem::replace(&mut rig.appended, mpsc::channel(1).1);
        let journal = rig.journal.clone();
        let acker_acked = Arc::clone(&acked);
        let asked = Arc::clone(&ack_asked);
        let acker = tokio::spawn(async move {
            while let Some(QueueInput::Appended(msgs)) = appended.recv().await {
                for m in msgs {
                    if m.message.seq % 3 != 0 {
                        continue;
                    }
                    let acked = Arc::clone(&acker_acked);
                    let envelope = m.message.envelope.clone();
                    asked.lock().unwrap().insert(envelope.to_vec());
                    journal.send(Op::Settle {
                        queue: 1,
                        seq: m.message.seq,
                        forget_meta: false,
                        done: Some(Box::new(move |r| {
                            if r.is_ok() {
                                acked.lock().unwrap().insert(envelope.to_vec());
                            }
                        })),
                    });
                }
            }
        });
        let mut confirmed = BTreeSet::new();
        while confirmed.len() < crash_after as usize {
            let (id, result) = rig.answers.recv().await.unwrap();
            assert_eq!(result, Ok(1));
            confirmed.insert(bodies[id as usize].to_vec());
        }
        // The power fails: what was confirmed and acked so far is known before the disk
        // is looked at, so everything it counts was synced before this moment.
        let acked_now = acked.lock().unwrap().clone();
        let dir = tempfile::tempdir().unwrap();
        // Some of what was written since the last flush, or all, or none (more than
        // there is means all).
        let kept = fastrand::usize(0..64);
        let disk = Arc::new(rig.store.after_power_loss(dir.path(), kept));
        let wal = rig.wal.after_power_loss();
        publisher.abort();
        acker.abort();
        // The broker starts again: the store, with the write-ahead log replayed into it.
        let (_log, _) = open_log(
            Arc::clone(&disk) as Arc<dyn Store>,
            &wal,
            dir.path(),
            &rig.health,
        );

        let mut live = Live::default();
        disk.recover(&mut live).unwrap();
        let mut found: HashMap<Vec<u8>, usize> = HashMap::new();
        for m in &live.0 {
            *found.entry(m.envelope.to_vec()).or_default() += 1;
        }
        for (body, n) in &found {
            assert_eq!(*n, 1, "round {round}: a message is stored twice");
            assert!(
                bodies.iter().any(|b| b[..] == body[..]),
                "round {round}: never published"
            );
            assert!(
                !acked_now.contains(body),
                "round {round}: an answered ack came back"
            );
        }
        // A settle may be durable before its answer: only a message whose ack was
        // asked for may be missing.
        let asked_now = ack_asked.lock().unwrap().clone();
        for body in confirmed.difference(&asked_now) {
            assert!(
                found.contains_key(body),
                "round {round}: a confirmed message is lost"
            );
        }
        // And the recovered state is one the broker starts from again.
        let back = recovery::recover(&*disk, dir.path(), 1 << 20, Default::default());
        assert!(back.is_ok(), "round {round}: recovery failed");
    }
}

/// After a checkpoint the log file still holds records of its previous pass. When the
/// store then keeps commits the log never synced (sled writes its buffers out on its
/// own) and the power fails, a restart must not replay those old records over them: it
/// would set keys back, and bring a settled message back.
#[tokio::test]
async fn a_restart_never_replays_records_from_before_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TestStore::open(&dir.path().join("before")));
    let wal = SimFile::default();
    let health = Arc::new(StoreHealth::new(
        MIN_FREE,
        metrics::Gauge::noop(),
        metrics::Counter::noop(),
    ));
    let (mut log, _) = open_log(
        Arc::clone(&store) as Arc<dyn Store>,
        &wal,
        dir.path(),
        &health,
    );
    let publish = |body: &str| Entry {
        commands: vec![Command::Publish {
            queues: vec![1],
            route_on_leader: false,
            publisher: 1,
            envelope: envelope(body),
            enqueued_ms: 1,
            deadline_ms: None,
            dedup: None,
        }],
    };
    let declare = Entry {
        commands: vec![Command::Declare { def: def("q", 0) }],
    };
    log.append(declare, true).await.await.unwrap();
    log.append(publish("a"), true).await.await.unwrap();
    log.compact().unwrap();
    // Nobody waits for these two: in the store, in the log, neither synced.
    let settle = Entry {
        commands: vec![Command::Settle {
            queue: 1,
            seq: 0,
            forget_meta: false,
        }],
    };
    log.append(settle, false).await.await.unwrap();
    log.append(publish("b"), false).await.await.unwrap();

    let after = dir.path().join("after");
    let disk = Arc::new(store.after_power_loss(&after, usize::MAX));
    let (_log, _) = open_log(
        Arc::clone(&disk) as Arc<dyn Store>,
        &wal.after_power_loss(),
        &after,
        &health,
    );
    let mut live = Live::default();
    disk.recover(&mut live).unwrap();
    let bodies: Vec<_> = live.0.iter().map(|m| m.envelope.clone()).collect();
    assert_eq!(
        bodies,
        vec![envelope("b")],
        "a stays settled, b stays stored"
    );
}
