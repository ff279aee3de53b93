//! The journal: the one writer to the store, with group commit.
//!
//! Every write — published messages, settles, redelivery counts, queue definitions,
//! dead-letter moves — goes through this thread. It takes everything waiting in its
//! channels, applies it as one atomic [`Commit`], flushes once (under `sync = always`),
//! and only then tells queue tasks about their new messages, sends the confirms and
//! answers requests. While one flush runs, the next batch gathers, so a busy broker
//! makes one fsync serve hundreds of confirms.
//!
//! Two channels feed it. Publishes come through a bounded one: when the disk falls
//! behind, sessions wait to send and stop reading from their publishers, so memory does
//! not fill up. Queue tasks use an unbounded one: what they send (settles, counts,
//! dead-letter moves) is bounded by the messages they hold, and a queue task must never
//! wait on the journal while the journal may be waiting on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{Confirm, ErrorCode, ErrorFrame};
use tern_storage::{Commit, DedupEntry, MessageMeta, QueueId, QueueRecord, Store, StoredMessage};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::SyncPolicy;
use crate::dedup::DedupWindow;
use crate::handler::Reject;
use crate::outbound::{Outbound, Wakes};
use crate::queue::def::{OverflowDef, QueueDef};
use crate::queue::{Appended, QueueInput};
use crate::store_health::StoreHealth;

/// Most operations taken into one commit, to bound its latency.
const MAX_BATCH: usize = 4096;

/// Message bytes waiting for or in a commit, across all publishers. A publisher past
/// it waits — and so stops reading its socket: TCP slows it down — instead of the
/// journal's queue holding whatever clients send faster than the disk takes it (its
/// bound in operations alone let 1,024 publishes of up to a frame each wait there).
const MAX_PENDING_BYTES: usize = 32 << 20;

/// How often the dedup window is trimmed.
const DEDUP_EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// Where to send a publish's CONFIRM.
#[derive(Debug)]
pub(crate) struct ConfirmTo {
    pub outbound: Arc<Outbound>,
    pub id: u32,
    /// When the publish arrived, for the confirm-latency histogram.
    pub received: Instant,
}

/// A message for one or more queues.
#[derive(Debug)]
pub(crate) struct PublishOp {
    pub queues: Vec<QueueId>,
    /// The publishing connection, so that its own request earns it no reply permit.
    pub publisher: u64,
    /// The envelope in wire form, in its own allocation.
    pub envelope: Bytes,
    pub enqueued_ms: u64,
    /// Expiry set by the publisher (a request deadline), before any queue TTL.
    pub deadline_ms: Option<u64>,
    pub dedup: Option<DedupEntry>,
    pub confirm: Option<ConfirmTo>,
    /// Its share of [`MAX_PENDING_BYTES`], held until its commit is done; set by
    /// [`Journal::publish`].
    pub held: Option<OwnedSemaphorePermit>,
}

/// Called once an operation's commit is durable, or failed.
pub(crate) type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What queue tasks and the queue registry ask of the journal.
pub(crate) enum Op {
    /// A message is settled (acked, purged): remove it.
    Settle {
        queue: QueueId,
        seq: u64,
        forget_meta: bool,
        /// Called once the settle is committed.
        done: Option<Done>,
    },
    /// Record or forget a message's meta.
    Meta {
        queue: QueueId,
        seq: u64,
        meta: Option<MessageMeta>,
        done: Option<Done>,
    },
    /// Settle a message in one queue and append it (maybe changed) to another, in one
    /// commit: dead-lettering and moving.
    Transfer {
        from: QueueId,
        seq: u64,
        forget_meta: bool,
        to: QueueId,
        envelope: Bytes,
        enqueued_ms: u64,
    },
    /// Create or recreate a queue.
    PutQueue {
        record: QueueRecord,
        def: Arc<QueueDef>,
        tasks: mpsc::Sender<QueueInput>,
        next_seq: u64,
        done: Done,
    },
    /// Delete a queue and everything in it.
    DeleteQueue { queue: QueueId, done: Done },
    /// Answer once everything sent before it is committed.
    Barrier { done: Done },
    /// Commit what was sent before, flush, and stop.
    Shutdown { done: Done },
}

/// The journal's senders.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    publish: mpsc::Sender<PublishOp>,
    internal: mpsc::UnboundedSender<Op>,
    /// [`MAX_PENDING_BYTES`] as permits, one per byte.
    pending_bytes: Arc<Semaphore>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Settle { .. } => "Settle",
            Op::Meta { .. } => "Meta",
            Op::Transfer { .. } => "Transfer",
            Op::PutQueue { .. } => "PutQueue",
            Op::DeleteQueue { .. } => "DeleteQueue",
            Op::Barrier { .. } => "Barrier",
            Op::Shutdown { .. } => "Shutdown",
        })
    }
}

impl Journal {
    /// Queues a publish, waiting while the journal is full.
    ///
    /// # Errors
    ///
    /// The journal has stopped (the server is shutting down).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled send loses the operation.
    pub async fn publish(&self, mut op: PublishOp) -> Result<(), PublishOp> {
        // A message larger than the whole budget goes through alone.
        let bytes = op.envelope.len().clamp(1, MAX_PENDING_BYTES);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        match Arc::clone(&self.pending_bytes)
            .acquire_many_owned(bytes)
            .await
        {
            Ok(permit) => op.held = Some(permit),
            Err(_) => return Err(op),
        }
        self.publish.send(op).await.map_err(|e| e.0)
    }

    /// Queues an internal operation. Never waits.
    pub fn send(&self, op: Op) {
        if let Err(mpsc::error::SendError(op)) = self.internal.send(op) {
            tracing::debug!(?op, "journal stopped; operation dropped");
        }
    }

    /// Waits until everything sent before is committed.
    pub async fn barrier(&self) -> Result<(), String> {
        self.wait(|done| Op::Barrier { done }).await
    }

    /// Commits everything sent before, flushes the store, and stops the journal.
    pub async fn shutdown(&self) -> Result<(), String> {
        self.wait(|done| Op::Shutdown { done }).await
    }

    async fn wait(&self, op: impl FnOnce(Done) -> Op) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(op(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.await
            .unwrap_or_else(|_| Err("the journal has stopped".into()))
    }
}

/// Per queue, what the journal tracks: sequence numbers, chunks, options.
#[derive(Debug)]
struct JournalQueue {
    next_seq: u64,
    /// Chunks by first sequence number.
    chunks: BTreeMap<u64, Chunk>,
    /// Messages stored and not settled.
    live: u64,
    def: Arc<QueueDef>,
    tasks: mpsc::Sender<QueueInput>,
}

/// What recovery found of a chunk: where it starts, its length, which of its records
/// are settled, and how many are not.
#[derive(Debug)]
pub(crate) struct ChunkSummary {
    pub first_seq: u64,
    pub len: u32,
    pub settled: Vec<u8>,
    pub live: u32,
}

#[derive(Debug)]
struct Chunk {
    len: u32,
    settled: Vec<u8>,
    live: u32,
}

impl Chunk {
    fn new(len: u32) -> Self {
        Self {
            len,
            settled: vec![0; usize::try_from(len.div_ceil(8)).unwrap_or(0)],
            live: len,
        }
    }

    /// Marks record `i` settled; returns whether it was live.
    fn settle(&mut self, i: u64) -> bool {
        let Some(byte) = usize::try_from(i / 8)
            .ok()
            .and_then(|b| self.settled.get_mut(b))
        else {
            return false;
        };
        let bit = 1u8 << (i % 8);
        if *byte & bit != 0 {
            return false;
        }
        *byte |= bit;
        self.live -= 1;
        true
    }
}

impl JournalQueue {
    /// Settles `seq`; returns the first seq of its chunk when the chunk changed.
    fn settle(&mut self, seq: u64) -> Option<u64> {
        let (&first, chunk) = self.chunks.range_mut(..=seq).next_back()?;
        if seq - first >= u64::from(chunk.len) || !chunk.settle(seq - first) {
            return None;
        }
        self.live = self.live.saturating_sub(1);
        Some(first)
    }

    fn full(&self) -> bool {
        self.def.overflow == OverflowDef::Reject
            && self.def.max_length.is_some_and(|m| self.live >= m)
    }

    fn expiry(&self, enqueued_ms: u64, deadline_ms: Option<u64>) -> Option<u64> {
        let ttl = self.def.ttl_ms.map(|t| enqueued_ms.saturating_add(t));
        match (ttl, deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What one commit owes once it is durable.
#[derive(Default)]
struct Outcome {
    appended: HashMap<QueueId, Vec<Appended>>,
    /// Each publisher's answer: how many queues took the message, or why not.
    confirms: Vec<(ConfirmTo, Result<u16, Reject>)>,
    done: Vec<Done>,
    new_chunks: Vec<(QueueId, u64, u32)>,
    dedup: Vec<DedupEntry>,
    /// Live counts to take back if the commit fails.
    added_live: Vec<(QueueId, u64)>,
    /// Answered after the final flush.
    shutdown: Option<Done>,
    /// The publishes' shares of the byte budget, released when the commit is done.
    held: Vec<OwnedSemaphorePermit>,
}

/// The journal thread's state.
pub(crate) struct Writer {
    store: Arc<dyn Store>,
    /// The disk alarm and write failures, shared with `/healthz`.
    health: Arc<StoreHealth>,
    metrics: JournalMetrics,
    sync: SyncPolicy,
    queues: HashMap<QueueId, JournalQueue>,
    dedup: Arc<Mutex<DedupWindow>>,
    last_flush: Instant,
    dirty: bool,
    /// Set by [`Op::Shutdown`]: stop after this commit.
    stopping: bool,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The journal's share of the server's metrics.
#[derive(Clone)]
pub(crate) struct JournalMetrics {
    pub commits: metrics::Counter,
    pub flushes: metrics::Counter,
    pub bytes_written: metrics::Counter,
    pub flush_duration: metrics::Histogram,
    pub confirm_latency: metrics::Histogram,
}

impl Writer {
    pub fn new(
        store: Arc<dyn Store>,
        health: Arc<StoreHealth>,
        sync: SyncPolicy,
        dedup: Arc<Mutex<DedupWindow>>,
        metrics: JournalMetrics,
    ) -> Self {
        Self {
            store,
            health,
            metrics,
            sync,
            queues: HashMap::new(),
            dedup,
            last_flush: Instant::now(),
            dirty: false,
            stopping: false,
        }
    }

    /// A queue found in the store at start, with its chunks' settled state.
    pub fn recover_queue(
        &mut self,
        id: QueueId,
        def: Arc<QueueDef>,
        tasks: mpsc::Sender<QueueInput>,
        next_seq: u64,
        chunks: Vec<ChunkSummary>,
    ) {
        let mut live = 0;
        let chunks = chunks
            .into_iter()
            .map(|summary| {
                live += u64::from(summary.live);
                let mut c = Chunk::new(summary.len);
                for (dst, src) in c.settled.iter_mut().zip(summary.settled) {
                    *dst = src;
                }
                c.live = summary.live;
                (summary.first_seq, c)
            })
            .collect();
        self.queues.insert(
            id,
            JournalQueue {
                next_seq,
                chunks,
                live,
                def,
                tasks,
            },
        );
    }

    /// Starts the journal thread. Returns its senders and a handle that completes when
    /// it has flushed and stopped (after every sender is dropped).
    pub fn spawn(self) -> std::io::Result<(Journal, std::thread::JoinHandle<()>)> {
        let (publish_tx, publish_rx) = mpsc::channel(1024);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let handle = std::thread::Builder::new()
            .name("tern-journal".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(self.run(publish_rx, internal_rx)),
                    Err(e) => tracing::error!(error = %e, "journal cannot start"),
                }
            })?;
        Ok((
            Journal {
                publish: publish_tx,
                internal: internal_tx,
                pending_bytes: Arc::new(Semaphore::new(MAX_PENDING_BYTES)),
            },
            handle,
        ))
    }

    async fn run(
        mut self,
        mut publish: mpsc::Receiver<PublishOp>,
        mut internal: mpsc::UnboundedReceiver<Op>,
    ) {
        let mut last_expiry = Instant::now();
        let (mut publish_open, mut internal_open) = (true, true);
        while (publish_open || internal_open) && !self.stopping {
            let flush_in = match self.sync {
                SyncPolicy::Interval(d) if self.dirty => {
                    d.saturating_sub(self.last_flush.elapsed())
                }
                _ => Duration::from_secs(3600),
            };
            let mut publishes = Vec::new();
            let mut ops = Vec::new();
            tokio::select! {
                biased;
                op = internal.recv(), if internal_open => match op {
                    Some(op) => ops.push(op),
                    None => internal_open = false,
                },
                op = publish.recv(), if publish_open => match op {
                    Some(op) => publishes.push(op),
                    None => publish_open = false,
                },
                () = tokio::time::sleep(flush_in) => {}
            }
            while ops.len() + publishes.len() < MAX_BATCH {
                if let Ok(op) = internal.try_recv() {
                    ops.push(op);
                } else if let Ok(op) = publish.try_recv() {
                    publishes.push(op);
                } else {
                    break;
                }
            }
            let expire = last_expiry.elapsed() >= DEDUP_EXPIRY_EVERY;
            if expire {
                last_expiry = Instant::now();
            }
            self.commit(publishes, ops, expire).await;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush of the store failed");
        }
    }

    /// Flushes and answers a shutdown request.
    fn finish(&mut self, done: Done) {
        let result = self.store.flush().map_err(|e| e.to_string());
        self.dirty = false;
        done(result);
    }

    /// Applies one batch, makes it durable as the sync policy says, then settles what
    /// it owes.
    async fn commit(&mut self, publishes: Vec<PublishOp>, ops: Vec<Op>, expire_dedup: bool) {
        let now = now_ms();
        let mut commit = Commit::default();
        let mut out = Outcome::default();
        let mut chunk_msgs: HashMap<QueueId, Vec<Appended>> = HashMap::new();
        let mut touched: HashMap<QueueId, Vec<u64>> = HashMap::new();

        for op in ops {
            self.stage_op(op, &mut commit, &mut out, &mut chunk_msgs, &mut touched);
        }
        for p in self.admit(publishes) {
            self.stage_publish(p, &mut out, &mut chunk_msgs);
        }
        for (queue, msgs) in chunk_msgs {
            let (Some(first), Ok(len)) = (msgs.first(), u32::try_from(msgs.len())) else {
                continue;
            };
            out.new_chunks.push((queue, first.message.seq, len));
            if let Some(q) = self.queues.get(&queue) {
                commit.next_seqs.push((queue, q.next_seq));
            }
            commit
                .chunks
                .push((queue, msgs.iter().map(|a| a.message.clone()).collect()));
            out.appended.insert(queue, msgs);
        }
        for (queue, firsts) in touched {
            let Some(q) = self.queues.get_mut(&queue) else {
                continue;
            };
            for first in firsts {
                match q.chunks.get(&first) {
                    Some(c) if c.live == 0 => {
                        q.chunks.remove(&first);
                        commit.settled.push((queue, first, None));
                    }
                    Some(c) => commit.settled.push((queue, first, Some(c.settled.clone()))),
                    None => {}
                }
            }
        }
        if expire_dedup {
            commit.dedup_forget_before = lock(&self.dedup).expire(now);
        }
        commit.dedup = std::mem::take(&mut out.dedup);

        let result = if commit.is_empty() {
            Ok(())
        } else {
            self.write(&commit)
        };
        let shutdown = out.shutdown.take();
        self.health
            .commit_result(result.as_ref().map(|_| ()).map_err(String::as_str));
        match result {
            Ok(()) => self.succeeded(out).await,
            Err(e) => {
                tracing::error!(error = %e, "store write failed; publishers get storage_failed");
                self.failed(out, commit.dedup, e);
            }
        }
        if let Some(done) = shutdown {
            self.finish(done);
        }
    }

    /// The publishes the store may take now: all of them, or none while the disk alarm
    /// is raised. Those refused are answered `storage_failed` with the alarm's reason
    /// and leave the dedup window, so that a retry after the alarm is stored.
    fn admit(&mut self, publishes: Vec<PublishOp>) -> Vec<PublishOp> {
        if publishes.is_empty() {
            return publishes;
        }
        let Some(reason) = self.health.check_disk(&*self.store) else {
            return publishes;
        };
        let mut wakes = Wakes::default();
        let mut window = lock(&self.dedup);
        for p in publishes {
            if let Some(d) = &p.dedup {
                window.remove(&d.producer, d.sequence);
            }
            if let Some(to) = p.confirm {
                to.outbound.push_control(
                    &ErrorFrame::new(to.id, ErrorCode::StorageFailed, reason.clone()),
                    &mut wakes,
                );
            }
        }
        drop(window);
        wakes.wake_all();
        Vec::new()
    }

    fn write(&mut self, commit: &Commit) -> Result<(), String> {
        self.store.apply(commit).map_err(|e| e.to_string())?;
        self.metrics.commits.increment(1);
        let bytes: usize = commit
            .chunks
            .iter()
            .flat_map(|(_, msgs)| msgs.iter().map(|m| m.envelope.len()))
            .sum();
        self.metrics.bytes_written.increment(bytes as u64);
        self.dirty = true;
        let flush_now = match self.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Interval(d) => self.last_flush.elapsed() >= d,
            SyncPolicy::Never => false,
        };
        if flush_now {
            let started = Instant::now();
            self.store.flush().map_err(|e| e.to_string())?;
            self.metrics.flushes.increment(1);
            self.metrics.flush_duration.record(started.elapsed());
            self.dirty = false;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    fn stage_publish(
        &mut self,
        p: PublishOp,
        out: &mut Outcome,
        chunk_msgs: &mut HashMap<QueueId, Vec<Appended>>,
    ) {
        let mut stored = 0u16;
        let mut full = None;
        for queue in &p.queues {
            let Some(q) = self.queues.get_mut(queue) else {
                continue;
            };
            if q.full() {
                full = Some(q.def.name.clone());
                continue;
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            q.live += 1;
            out.added_live.push((*queue, 1));
            stored = stored.saturating_add(1);
            chunk_msgs.entry(*queue).or_default().push(Appended {
                message: StoredMessage {
                    seq,
                    enqueued_ms: p.enqueued_ms,
                    expires_ms: q.expiry(p.enqueued_ms, p.deadline_ms),
                    envelope: p.envelope.clone(),
                },
                publisher: Some(p.publisher),
            });
        }
        if let Some(entry) = p.dedup {
            out.dedup.push(entry);
        }
        out.held.extend(p.held);
        if let Some(confirm) = p.confirm {
            let result = match full {
                Some(name) => Err(Reject::new(
                    ErrorCode::QueueFull,
                    format!("queue '{name}' is at its max_length and refuses new messages"),
                )),
                None => Ok(stored),
            };
            out.confirms.push((confirm, result));
        }
    }

    fn stage_op(
        &mut self,
        op: Op,
        commit: &mut Commit,
        out: &mut Outcome,
        chunk_msgs: &mut HashMap<QueueId, Vec<Appended>>,
        touched: &mut HashMap<QueueId, Vec<u64>>,
    ) {
        match op {
            Op::Settle {
                queue,
                seq,
                forget_meta,
                done,
            } => {
                self.settle(queue, seq, forget_meta, commit, touched);
                out.done.extend(done);
            }
            Op::Meta {
                queue,
                seq,
                meta,
                done,
            } => {
                commit.metas.push((queue, seq, meta));
                out.done.extend(done);
            }
            Op::Transfer {
                from,
                seq,
                forget_meta,
                to,
                envelope,
                enqueued_ms,
            } => {
                self.settle(from, seq, forget_meta, commit, touched);
                if let Some(q) = self.queues.get_mut(&to) {
                    let seq = q.next_seq;
                    q.next_seq += 1;
                    q.live += 1;
                    out.added_live.push((to, 1));
                    chunk_msgs
                        .entry(to)
                        .or_default()
                        .push(Appended::from(StoredMessage {
                            seq,
                            enqueued_ms,
                            expires_ms: q.expiry(enqueued_ms, None),
                            envelope,
                        }));
                }
            }
            Op::PutQueue {
                record,
                def,
                tasks,
                next_seq,
                done,
            } => {
                let id = record.id;
                commit.put_queues.push(record);
                commit.next_seqs.push((id, next_seq));
                self.queues.insert(
                    id,
                    JournalQueue {
                        next_seq,
                        chunks: BTreeMap::new(),
                        live: 0,
                        def,
                        tasks,
                    },
                );
                out.done.push(done);
            }
            Op::DeleteQueue { queue, done } => {
                self.queues.remove(&queue);
                touched.remove(&queue);
                chunk_msgs.remove(&queue);
                commit.delete_queues.push(queue);
                out.done.push(done);
            }
            Op::Barrier { done } => out.done.push(done),
            Op::Shutdown { done } => {
                self.stopping = true;
                out.shutdown = Some(done);
            }
        }
    }

    fn settle(
        &mut self,
        queue: QueueId,
        seq: u64,
        forget_meta: bool,
        commit: &mut Commit,
        touched: &mut HashMap<QueueId, Vec<u64>>,
    ) {
        if forget_meta {
            commit.metas.push((queue, seq, None));
        }
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        if let Some(first) = q.settle(seq) {
            let firsts = touched.entry(queue).or_default();
            if !firsts.contains(&first) {
                firsts.push(first);
            }
        }
    }

    async fn succeeded(&mut self, out: Outcome) {
        for (queue, first, len) in out.new_chunks {
            if let Some(q) = self.queues.get_mut(&queue) {
                q.chunks.insert(first, Chunk::new(len));
            }
        }
        // Queue tasks first: a client that has its confirm and then asks the queue (info,
        // consume) is served after the queue task took the message in, as its inputs are
        // handled in order.
        for (queue, msgs) in out.appended {
            let Some(q) = self.queues.get(&queue) else {
                continue;
            };
            // Waits while the queue task is behind: back-pressure, never a deadlock,
            // because queue tasks never wait on the journal.
            if q.tasks.send(QueueInput::Appended(msgs)).await.is_err() {
                tracing::debug!(
                    queue,
                    "queue task stopped; appended messages stay in the store"
                );
            }
        }
        let mut wakes = Wakes::default();
        for (to, result) in out.confirms {
            self.metrics.confirm_latency.record(to.received.elapsed());
            match result {
                Ok(queues) => to.outbound.push_control(
                    &Confirm {
                        id: to.id,
                        queues,
                        duplicate: false,
                    },
                    &mut wakes,
                ),
                Err(r) => {
                    to.outbound
                        .push_control(&ErrorFrame::new(to.id, r.code, r.message), &mut wakes);
                }
            }
        }
        wakes.wake_all();
        for done in out.done {
            done(Ok(()));
        }
    }

    fn failed(&mut self, out: Outcome, dedup: Vec<DedupEntry>, error: String) {
        for (queue, n) in out.added_live {
            if let Some(q) = self.queues.get_mut(&queue) {
                q.live = q.live.saturating_sub(n);
            }
        }
        {
            let mut window = lock(&self.dedup);
            for e in &dedup {
                window.remove(&e.producer, e.sequence);
            }
        }
        let mut wakes = Wakes::default();
        for (to, _) in out.confirms {
            to.outbound.push_control(
                &ErrorFrame::new(
                    to.id,
                    ErrorCode::StorageFailed,
                    format!("the message could not be stored: {error}"),
                ),
                &mut wakes,
            );
        }
        wakes.wake_all();
        for done in out.done {
            done(Err(error.clone()));
        }
    }
}

/// The window holds no invariant a panic could break; a poisoned lock is still usable.
pub(crate) fn lock(m: &Mutex<DedupWindow>) -> std::sync::MutexGuard<'_, DedupWindow> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use bytes::BytesMut;
    use tern_codec::{Frame, QueueDeclare};
    use tern_storage::{Recover, SledStore, StorageError};
    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::{QueueDefaults, SlowConsumerPolicy};

    /// A sled store whose writes fail while `full` is set, as on a full disk, and
    /// whose filesystem reports `free` bytes free.
    #[derive(Debug)]
    struct DiskFull {
        store: SledStore,
        full: AtomicBool,
        free: AtomicU64,
    }

    impl Store for DiskFull {
        fn recover(&self, into: &mut dyn Recover) -> Result<(), StorageError> {
            self.store.recover(into)
        }
        fn apply(&self, commit: &Commit) -> Result<(), StorageError> {
            if self.full.load(Ordering::Relaxed) {
                return Err(StorageError::Refused {
                    detail: "no space left on device".into(),
                });
            }
            self.store.apply(commit)
        }
        fn flush(&self) -> Result<(), StorageError> {
            self.store.flush()
        }
        fn read_message(
            &self,
            queue: QueueId,
            seq: u64,
        ) -> Result<Option<StoredMessage>, StorageError> {
            self.store.read_message(queue, seq)
        }
        fn size_on_disk(&self) -> Result<u64, StorageError> {
            self.store.size_on_disk()
        }
        fn free_bytes(&self) -> Result<u64, StorageError> {
            Ok(self.free.load(Ordering::Relaxed))
        }
    }

    fn publish(outbound: &Arc<Outbound>, id: u32, sequence: u64) -> PublishOp {
        PublishOp {
            queues: vec![1],
            publisher: 1,
            envelope: Bytes::from_static(b"message"),
            enqueued_ms: now_ms(),
            deadline_ms: None,
            dedup: Some(DedupEntry {
                producer: "p".into(),
                sequence,
                at_ms: now_ms(),
            }),
            confirm: Some(ConfirmTo {
                outbound: Arc::clone(outbound),
                id,
                received: Instant::now(),
            }),
            held: None,
        }
    }

    /// Reads frames from `rd` until one arrives.
    async fn next_frame(rd: &mut tokio::io::DuplexStream, buf: &mut BytesMut) -> Frame {
        loop {
            if let Some(frame) = Frame::decode(buf, 1 << 20).unwrap() {
                return frame;
            }
            assert_ne!(rd.read_buf(buf).await.unwrap(), 0, "the connection ended");
        }
    }

    /// A journal with one queue over a [`DiskFull`] store, and a connection to read
    /// its answers from.
    struct Rig {
        store: Arc<DiskFull>,
        health: Arc<StoreHealth>,
        dedup: Arc<Mutex<DedupWindow>>,
        journal: Journal,
        outbound: Arc<Outbound>,
        rd: tokio::io::DuplexStream,
        buf: BytesMut,
        appended: mpsc::Receiver<QueueInput>,
        _dir: tempfile::TempDir,
    }

    const MIN_FREE: u64 = 1 << 20;

    impl Rig {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(DiskFull {
                store: SledStore::open(dir.path()).unwrap(),
                full: AtomicBool::new(false),
                free: AtomicU64::new(u64::MAX),
            });
            let health = Arc::new(StoreHealth::new(
                MIN_FREE,
                metrics::Gauge::noop(),
                metrics::Counter::noop(),
            ));
            let dedup = Arc::new(Mutex::new(DedupWindow::new(1000, 60_000)));
            let metrics = JournalMetrics {
                commits: metrics::Counter::noop(),
                flushes: metrics::Counter::noop(),
                bytes_written: metrics::Counter::noop(),
                flush_duration: metrics::Histogram::noop(),
                confirm_latency: metrics::Histogram::noop(),
            };
            let mut writer = Writer::new(
                Arc::clone(&store) as Arc<dyn Store>,
                Arc::clone(&health),
                SyncPolicy::Always,
                Arc::clone(&dedup),
                metrics,
            );
            let declare = QueueDeclare {
                id: 1,
                name: "q".into(),
                bindings: Vec::new(),
                options: Default::default(),
            };
            let def =
                QueueDef::from_declare(&declare, &QueueDefaults::default(), &Default::default())
                    .unwrap();
            let (tasks, appended) = mpsc::channel(16);
            writer.recover_queue(1, Arc::new(def), tasks, 0, Vec::new());
            let (journal, _thread) = writer.spawn().unwrap();
            let outbound = Arc::new(Outbound::new(
                1 << 20,
                SlowConsumerPolicy::Drop,
                CancellationToken::new(),
                Arc::default(),
            ));
            let (wr, rd) = tokio::io::duplex(1 << 16);
            tokio::spawn(Arc::clone(&outbound).write_to(wr, Duration::from_secs(5)));
            Rig {
                store,
                health,
                dedup,
                journal,
                outbound,
                rd,
                buf: BytesMut::new(),
                appended,
                _dir: dir,
            }
        }

        /// Publishes (producer "p", `sequence`) with confirm id `id`, recording the
        /// pair in the window first as the session does; returns the answer.
        async fn publish(&mut self, id: u32, sequence: u64) -> Frame {
            assert!(lock(&self.dedup).insert("p", sequence, now_ms()));
            self.journal
                .publish(publish(&self.outbound, id, sequence))
                .await
                .unwrap();
            next_frame(&mut self.rd, &mut self.buf).await
        }

        /// The answer must be storage_failed for `id`, its message containing `why`,
        /// with the pair out of the window so that a retry is stored.
        fn refused(&self, answer: Frame, id: u32, sequence: u64, why: &str) {
            match answer {
                Frame::Error(e) => {
                    assert_eq!((e.id, e.code()), (id, Some(ErrorCode::StorageFailed)));
                    assert!(e.message.contains(why), "{}", e.message);
                }
                other => panic!("expected storage_failed, got {other:?}"),
            }
            assert!(
                lock(&self.dedup).insert("p", sequence, now_ms()),
                "the refused sequence may be sent again"
            );
            lock(&self.dedup).remove("p", sequence);
        }

        /// The answer must be a confirm for `id`, and the queue task must get the
        /// message.
        async fn stored(&mut self, answer: Frame, id: u32) {
            match answer {
                Frame::Confirm(c) => assert_eq!((c.id, c.queues), (id, 1)),
                other => panic!("expected a confirm, got {other:?}"),
            }
            match self.appended.recv().await {
                Some(QueueInput::Appended(msgs)) => assert_eq!(msgs.len(), 1),
                other => panic!("expected the message for the queue, got {other:?}"),
            }
            assert_eq!(self.health.problem(), None);
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_confirm_and_the_journal_goes_on() {
        let mut rig = Rig::new();
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
        let mut rig = Rig::new();
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
}
